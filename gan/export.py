"""Export a run's generator to one self-contained ONNX file, and prove that it computes what PyTorch does.

The file's interface is the contract with other applications (``gan/onnx_generator.py``, ``examples/node``,
``examples/web``): input ``z`` float32 [batch, latent_dim], output ``images`` float32 [batch, 1, 28, 28] in
[-1, 1], the run's provenance in ``metadata_props``. A class-conditional generator (a run trained with
``--num-classes``) has a second input ``labels`` int64 [batch], and its metadata says what the labels mean
(``num_classes``, ``class_names``, ``class_names_romanized``). Verification never trusts the exporter: it loads the
saved file back, runs ``onnx.checker`` with ``full_check=True`` and compares a fresh onnxruntime session with
the PyTorch generator. The files are written and verified under temporary names and take their final names
only when every check has passed, so a failed export leaves an earlier good one as it was.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from gan.artifacts import (
    CONFIG_FILE,
    GENERATOR_FILE,
    WEIGHTS,
    generator_path,
    load_generator,
    read_generator_metadata,
)
from gan.atomic_write import atomic_path, write_json
from gan.cli import add_dataclass_flags, parse_validated
from gan.data import CLASS_CHARACTERS, CLASS_NAMES
from gan.models import IMAGE_SHAPE, Generator
from gan.noise import latent_noise, sample_labels
from gan.onnx_generator import BATCH_AXIS, INPUT_NAME, LABELS_NAME, MODEL_FILE, OUTPUT_NAME, open_session
from gan.paths import output_file_problem
from gan.tracking import log_export, model_artifact_name

DATASET = "Kuzushiji-MNIST"
OUTPUT_RANGE = (-1, 1)
REPORT_FILE = "export_report.json"
# A failed verification's report: beside, not over, the report of the files that are still there.
FAILED_REPORT_FILE = "export_report.failed.json"
EXAMPLE_BATCH = 2  # >= 2: an example batch of 1 lets the exporter specialise the batch axis to the constant 1
VERIFY_BATCHES = (1, 7, 64, 1000)  # a conditional model's labels: sample_labels, so 64 and 1000 hold every class
VERIFY_SEED = 0
MIN_OPSET = 18  # the dynamo exporter's oldest opset
# Max abs difference from the fp32 PyTorch generator allowed for each precision. fp32: float32 rounding of a
# different kernel order. fp16: about one grey level (1/127.5 = 7.8e-3) with room for longer-trained generators,
# whose larger weights round less exactly (docs/deployment.md has the measured errors).
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2}


class ExportError(RuntimeError):
    """Export or verification failed; the message names the file, what was wrong and what to do."""


@dataclass
class ExportConfig:
    """Every setting of one export; the flags of ``export.py`` map one to one onto these fields."""

    run_dir: str | None = field(
        default=None,
        metadata={"help": "the training run folder to export (default: the newest run in --runs-dir)"},
    )
    output: str | None = field(
        default=None, metadata={"help": f"the ONNX file to write (default: RUN_DIR/{MODEL_FILE})"}
    )
    opset: int | None = field(default=None, metadata={"help": "ONNX opset (default: the torch exporter's default)"})
    fp16: bool = field(
        default=False,
        metadata={"help": "also write OUTPUT with suffix .fp16.onnx: fp16 weights, fp32 input/output"},
    )
    verify: bool = field(
        default=True,
        metadata={
            "help": f"check the saved file(s) against PyTorch and write RUN_DIR/{REPORT_FILE} (default: on)",
            "action": argparse.BooleanOptionalAction,
        },
    )
    runs_dir: str = field(
        default="runs", metadata={"help": "where to look for the newest run when RUN_DIR is omitted (default: runs)"}
    )
    weights: str = field(
        default="final",
        metadata={"help": "which generator to export: the run's final one, or the one with the lowest FID during "
                          "training (best/, kept with --eval-every) (default: final)", "choices": WEIGHTS},
    )
    wandb: bool | None = field(
        default=None,
        metadata={"help": "log the exported files as a version of the run's W&B model artifact (default: when the "
                          "run logged to W&B)", "action": argparse.BooleanOptionalAction},
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "publish the verified model, its card and files to the Hugging Face Hub (one commit)"},
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "the Hub repository, USER/NAME (default: your user name / the run's name)"}
    )
    private: bool = field(default=False, metadata={"help": "with --push-to-hub: create the Hub repository private"})

    def problems(self) -> list[str]:
        """Everything wrong with the values and paths, as flag-named sentences (empty when all is well).

        The files to write are tried for real where they are known before the newest run is looked up: with
        RUN_DIR, or with --output.
        """
        found = []
        newest_opset = onnx.defs.onnx_opset_version()
        if self.opset is not None and not MIN_OPSET <= self.opset <= newest_opset:
            found.append(
                f"--opset must be between {MIN_OPSET} (the dynamo exporter's oldest) and {newest_opset} (the "
                f"newest this onnx {onnx.__version__} knows), got {self.opset}"
            )
        if self.output is not None and not self.output.endswith(".onnx"):
            found.append(f"--output must name a .onnx file, got {self.output!r}")
            return found
        if self.push_to_hub or self.hub_model_id is not None or self.private:
            from gan.hub import hub_problems  # gan.hub builds on this module

            found += hub_problems(self.push_to_hub, self.hub_model_id, self.private)
        if self.push_to_hub and (self.output is not None or not self.verify):
            found.append("--push-to-hub publishes the run's own verified model: drop --output and --no-verify")
        if self.run_dir is None and not Path(self.runs_dir).is_dir():
            found.append(
                f"--runs-dir {self.runs_dir} is not a folder, so there is no newest run to export; pass the run "
                f"folder (python export.py RUN_DIR) or the folder that holds the runs"
            )
        run_dir = Path(self.run_dir) if self.run_dir is not None else None
        problem = run_dir_problem(run_dir) if run_dir is not None else None
        return found + ([problem] if problem else self.output_problems(run_dir))

    def outputs(self, run_dir: Path | None) -> list[tuple[Path, str]]:
        """(path, precision) of each model file to write: --output, else in ``run_dir`` (none while it is unknown)."""
        if self.output is None and run_dir is None:
            return []
        output = Path(self.output) if self.output is not None else run_dir / MODEL_FILE
        return [(output, "fp32")] + ([(fp16_path(output), "fp16")] if self.fp16 else [])

    def output_problems(self, run_dir: Path | None) -> list[str]:
        """A sentence for each file this export would write that cannot be written (the reports need ``run_dir``)."""
        files = [(path, "--output") for path, _ in self.outputs(run_dir)]
        if self.verify and run_dir is not None:
            files += [(run_dir / name, "RUN_DIR") for name in (REPORT_FILE, FAILED_REPORT_FILE)]
        return [problem for path, flag in files if (problem := output_file_problem(path, flag))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a training run's generator to one verified, self-contained ONNX file.",
    )
    add_dataclass_flags(parser, ExportConfig, positional=("run_dir",))
    return parser


def parse_export_config(argv: list[str] | None = None) -> ExportConfig:
    """Parse flags into an :class:`ExportConfig`; on invalid values print every problem and exit with 2."""
    return parse_validated(build_parser(), ExportConfig, argv)


def run_dir_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be a run folder (missing, or a file), or None."""
    if run_dir.is_dir():
        return None
    what = "it is a file" if run_dir.exists() else "it does not exist"
    return (
        f"RUN_DIR {run_dir} is not a folder ({what}). Pass the folder of a finished training run (it holds "
        f"{CONFIG_FILE} and {GENERATOR_FILE}), e.g. python export.py runs/<run-name>."
    )


def non_finite_problem(generator: Generator, source: Path) -> str | None:
    """Which weights and BatchNorm statistics of ``generator`` (loaded from ``source``) hold NaN/inf, or None."""
    names = [name for name, t in generator.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if not names:
        return None
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"{source}: {len(names)} tensors hold NaN/inf ({shown}); the run diverged and its model would draw only "
        f"NaN. Export another run, or retrain (python train_ddp.py ..., with a lower --lr)."
    )


def newest_run(runs_dir: str | Path) -> Path:
    """The most recently finished run (newest ``generator.safetensors``) among the folders in ``runs_dir``."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ExportError(
            f"{runs_dir}/ does not exist, so there is no newest run to export. Pass the run folder "
            f"(python export.py RUN_DIR) or train one first (python train_ddp.py ...)."
        )
    finished = [p.parent for p in runs_dir.glob(f"*/{GENERATOR_FILE}") if (p.parent / CONFIG_FILE).is_file()]
    if not finished:
        raise ExportError(
            f"{runs_dir}/ holds no finished run (a folder with {CONFIG_FILE} and {GENERATOR_FILE}). Pass the "
            f"run folder (python export.py RUN_DIR) or let a training run finish first."
        )
    return max(finished, key=lambda run: (run / GENERATOR_FILE).stat().st_mtime)


def model_metadata(config: dict[str, Any], precision: str, weights: str = "final", step: int | None = None
                   ) -> dict[str, str]:
    """The ONNX file's ``metadata_props``: what an app needs to drive the model and where it came from."""

    def required(key: str) -> Any:
        if key not in config:
            raise ExportError(
                f"{CONFIG_FILE} of run {config.get('run_name', '?')!r} has no {key!r}: it was not written by "
                f"a finished run of train_ddp.py. Re-run training (or add the key by hand) and export again."
            )
        return config[key]

    channels, height, width = IMAGE_SHAPE
    metadata = {
        "latent_dim": str(required("latent_dim")),
        "image_channels": str(channels),
        "image_height": str(height),
        "image_width": str(width),
        "output_range": json.dumps(list(OUTPUT_RANGE)),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "dataset": DATASET,
        "dataset_split": str(required("split")),
        "run_name": str(required("run_name")),
        "step": str(step if step is not None else required("final_step")),
        "weights": weights,
        "ema_weights": "true" if required("generator_weights") == "ema" else "false",
        "seed": str(required("seed")),
        "precision": precision,
        "torch_version": torch.__version__,
    }
    num_classes = int(config.get("num_classes", 0))
    if num_classes:  # what the labels mean: KMNIST's class map, in label order (the same for every run)
        metadata.update(
            num_classes=str(num_classes),
            class_names=json.dumps(CLASS_CHARACTERS[:num_classes], ensure_ascii=False),
            class_names_romanized=json.dumps(CLASS_NAMES[:num_classes]),
        )
    return metadata


class _HalfPrecision(nn.Module):
    """fp16 weights and arithmetic behind an fp32 interface: apps feed and read the same tensors as fp32."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z.to(torch.float16), labels).to(torch.float32)


def fold_batchnorm(generator: Generator) -> Generator:
    """A copy of the eval-mode generator with each BatchNorm folded into the ConvTranspose before it.

    The exporter folds them too, but after ``.half()`` it would fold in fp16; folding in fp32 first halves the
    fp16 model's error against fp32 PyTorch.
    """
    folded = copy.deepcopy(generator).eval()
    layers = list(folded.main)
    for index, (layer, following) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        if isinstance(layer, nn.ConvTranspose2d) and isinstance(following, nn.BatchNorm2d):
            folded.main[index] = fuse_conv_bn_eval(layer, following, transpose=True)
            folded.main[index + 1] = nn.Identity()
    return folded


def export_onnx(
    generator: Generator,
    path: Path,
    metadata: dict[str, str],
    opset: int | None = None,
    precision: str = "fp32",
) -> None:
    """Write ``generator`` (eval mode, plain BatchNorm) to ``path`` as one self-contained ONNX file."""
    module: nn.Module = generator.eval()
    if precision == "fp16":
        module = _HalfPrecision(fold_batchnorm(generator).half()).eval()
    example = torch.from_numpy(latent_noise(VERIFY_SEED, "verify", EXAMPLE_BATCH, generator.latent_dim))
    batch = torch.export.Dim(BATCH_AXIS)
    if generator.num_classes:  # z and labels share the one batch axis
        inputs = (example, torch.from_numpy(sample_labels(EXAMPLE_BATCH, generator.num_classes)))
        names, dynamic_shapes = [INPUT_NAME, LABELS_NAME], {"z": {0: batch}, "labels": {0: batch}}
    else:
        inputs, names, dynamic_shapes = (example,), [INPUT_NAME], {"z": {0: batch}}
    with warnings.catch_warnings():
        # z's and labels' batch axis is one axis on purpose; the exporter warns that it names it once, not twice.
        warnings.filterwarnings("ignore", message=f"# The axis name: {BATCH_AXIS} will not be used")
        program = torch.onnx.export(
            module,
            inputs,
            dynamo=True,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    program.model.metadata_props.update(metadata)
    # One file: the default external-data layout writes weights to a separate .data file that web/mobile apps
    # handle badly (the generator is ~1 MB, far below protobuf's 2 GB limit). Written as named:
    # run_export gives a temporary name and renames it once verified.
    program.save(path, external_data=False)


def verify_labels(num_classes: int) -> torch.Tensor | None:
    """The labels of the verification batches, int64 [max(VERIFY_BATCHES)] (None for an unconditional model): the
    classes in turn, so that each batch from num_classes images on compares every class."""
    return torch.from_numpy(sample_labels(max(VERIFY_BATCHES), num_classes)) if num_classes else None


def _io_description(node: ort.NodeArg) -> dict[str, Any]:
    return {"name": node.name, "dtype": node.type, "shape": list(node.shape)}


def verify_onnx(
    path: Path, generator: Generator, precision: str = "fp32", final_path: Path | None = None
) -> dict[str, Any]:
    """Check the saved file and compare a fresh onnxruntime session with ``generator`` (fp32 PyTorch).

    Returns a JSON-ready report whose ``failures`` list says what failed (empty when all passed). A file that
    cannot be checked or loaded at all is an :class:`ExportError`. ``final_path``: the name the report and the
    messages give a file verified under a temporary name.
    """
    tolerance = TOLERANCE[precision]
    latent_dim = generator.latent_dim
    name = final_path or path
    failures: list[str] = []
    try:
        onnx.checker.check_model(str(path), full_check=True)  # a path, not a proto: the check reads the file itself
    except Exception as error:  # ValidationError, InferenceError, or a protobuf DecodeError for a corrupt file
        raise ExportError(
            f"{name} fails onnx.checker.check_model(full_check=True): {type(error).__name__}: {error}. The "
            f"file is corrupt or the export is broken; re-export it with "
            f"`python export.py RUN_DIR --output {name}`."
        ) from None
    try:
        session = open_session(path, intra_op_threads=0)
    except RuntimeError as error:  # its message names the temporary file: name the one the user asked for
        raise ExportError(str(error).replace(str(path), str(name))) from None

    expected_inputs = [{"name": INPUT_NAME, "dtype": "tensor(float)", "shape": [BATCH_AXIS, latent_dim]}]
    if generator.num_classes:
        expected_inputs.append({"name": LABELS_NAME, "dtype": "tensor(int64)", "shape": [BATCH_AXIS]})
    expected_output = {"name": OUTPUT_NAME, "dtype": "tensor(float)", "shape": [BATCH_AXIS, *IMAGE_SHAPE]}
    inputs = [_io_description(node) for node in session.get_inputs()]
    outputs = [_io_description(node) for node in session.get_outputs()]
    if inputs != expected_inputs:
        failures.append(f"inputs are {inputs}, expected {expected_inputs}")
    if outputs != [expected_output]:
        failures.append(f"outputs are {outputs}, expected [{expected_output}]")

    fixed_noise = torch.from_numpy(latent_noise(VERIFY_SEED, "verify", max(VERIFY_BATCHES), latent_dim))
    fixed_labels = verify_labels(generator.num_classes)
    batches = []
    for batch in VERIFY_BATCHES:
        z, labels = fixed_noise[:batch], fixed_labels[:batch] if fixed_labels is not None else None
        feeds = {INPUT_NAME: z.numpy()} | ({LABELS_NAME: labels.numpy()} if labels is not None else {})
        with torch.no_grad():
            expected = generator(z, labels).numpy()  # (batch, 1, 28, 28)
        try:
            (actual,) = session.run([OUTPUT_NAME], feeds)
        except Exception as error:  # onnxruntime's own error classes
            failures.append(f"batch {batch}: onnxruntime failed: {error}")
            batches.append({"batch": batch, "error": str(error), "passed": False})
            continue
        shape_ok = actual.shape == expected.shape
        max_abs_diff = float(np.abs(actual - expected).max()) if shape_ok else float("nan")
        entry = {
            "batch": batch,
            "shape": list(actual.shape),
            "dtype": str(actual.dtype),
            "max_abs_diff": max_abs_diff,
            "mean_abs_diff": float(np.abs(actual - expected).mean()) if shape_ok else float("nan"),
            "passed": bool(shape_ok and actual.dtype == np.float32 and max_abs_diff <= tolerance),
        }
        if labels is not None:
            entry["classes"] = sorted(set(labels.tolist()))  # the classes this batch compared
        if not shape_ok:
            failures.append(f"batch {batch}: output shape {list(actual.shape)}, expected {list(expected.shape)}")
        if actual.dtype != np.float32:
            failures.append(f"batch {batch}: output dtype {actual.dtype}, expected float32")
        if shape_ok and not max_abs_diff <= tolerance:
            failures.append(f"batch {batch}: max abs diff {max_abs_diff:.3g} from PyTorch exceeds {tolerance:g}")
        batches.append(entry)

    model = onnx.load(str(path))
    return {
        "model": str(name),
        "precision": precision,
        "bytes": path.stat().st_size,
        "opset": next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")),
        "checker": "passed (full_check=True)",
        "tolerance": tolerance,
        "input": inputs,
        "output": outputs,
        "metadata": dict(session.get_modelmeta().custom_metadata_map),
        "batches": batches,
        "failures": failures,
        "passed": not failures,
    }


def format_table(reports: list[dict[str, Any]]) -> str:
    """The verification numbers as a short plain-text table."""
    row = "{:<28} {:>5}  {:<17} {:<8} {:>16} {:>7}  {}"
    lines = [row.format("model", "batch", "output shape", "dtype", "max |onnx-torch|", "bound", "ok")]
    for report in reports:
        name = f"{Path(report['model']).name} ({report['precision']})"
        for entry in report["batches"]:
            diff = f"{entry['max_abs_diff']:.2e}" if "max_abs_diff" in entry else "error"
            shape, dtype = str(entry.get("shape", "-")), entry.get("dtype", "-")
            ok = "yes" if entry["passed"] else "NO"
            lines.append(row.format(name, entry["batch"], shape, dtype, diff, f"{report['tolerance']:.0e}", ok))
    return "\n".join(lines)


def fp16_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".onnx") + ".fp16.onnx")


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Export (and unless ``config.verify`` is off, verify) the run; :class:`ExportError` on any failure.

    Nothing is renamed into place before every file has been written and verified: a failure leaves the files
    of an earlier export unchanged and no temporary files.
    """
    run_dir = Path(config.run_dir) if config.run_dir is not None else newest_run(config.runs_dir)
    problem = run_dir_problem(run_dir)
    if problem:
        raise ExportError(problem)
    problems = config.output_problems(run_dir)  # before the work: the newest run is known only now
    if problems:
        raise ExportError("; ".join(problems))
    # ArtifactError names a missing/corrupt file
    generator, run_config = load_generator(run_dir, weights=config.weights)
    source = generator_path(run_dir, config.weights)
    problem = non_finite_problem(generator, source)
    if problem:
        raise ExportError(problem)
    wandb_run_id = wandb_logging(config, run_config)
    # a final generator's step is the run's (config.json proves it finished); the best one's is in its file
    step = read_generator_metadata(source).get("step") if config.weights == "best" else run_config.get("final_step")
    targets = config.outputs(run_dir)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "models": [str(path) for path, _ in targets],
                               "weights": config.weights, "source": str(source), "step": step}
    with ExitStack() as renames:  # on leaving without an error, each temporary file takes its final name
        temporary = {path: renames.enter_context(atomic_path(path)) for path, _ in targets}
        for path, precision in targets:
            metadata = model_metadata(run_config, precision, config.weights,
                                      step if config.weights == "best" else None)
            export_onnx(generator, temporary[path], metadata, config.opset, precision)
        if config.verify:
            summary.update(verify(generator, [(temporary[path], path, precision) for path, precision in targets]))
            if not summary["passed"]:
                raise verification_failure(summary, run_dir)
    for path, precision in targets:
        print(f"wrote {path} ({precision}, {path.stat().st_size / 1e6:.2f} MB)")
    if config.verify:
        report_path = run_dir / REPORT_FILE
        write_json(report_path, summary)
        (run_dir / FAILED_REPORT_FILE).unlink(missing_ok=True)  # an earlier failure's report no longer applies
        print(format_table(summary["reports"]))
        print(f"wrote {report_path}")
    if config.verify and config.output is None:  # the run's own verified model: its card, then where it goes
        share(run_dir, run_config, summary, config, wandb_run_id)
    return summary


def wandb_logging(config: ExportConfig, run_config: dict[str, Any]) -> str | None:
    """The W&B run id whose model artifact this export adds to, or None when it logs nothing to W&B."""
    run_id = run_config.get("wandb_run_id")
    if config.wandb is False or (config.wandb is None and (run_config.get("report_to") != "wandb" or not run_id)):
        return None
    if not run_id:
        raise ExportError(f"--wandb: run {run_config.get('run_name')!r} did not log to W&B (its {CONFIG_FILE} has no "
                          f"wandb_run_id), so it has no model artifact to add to; drop --wandb")
    return run_id


def share(run_dir: Path, run_config: dict[str, Any], summary: dict[str, Any], config: ExportConfig,
          wandb_run_id: str | None) -> None:
    """After a verified export into the run folder: the model card, the W&B model artifact version (when the run
    logs to W&B) and the Hub upload (with --push-to-hub), each from the files just written."""
    from gan.card import write_card
    from gan.hub import push_to_hub

    if not config.push_to_hub:  # push_to_hub writes it, naming the repo
        print(f"wrote {write_card(run_dir, config.hub_model_id)}")
    if wandb_run_id is not None:
        files = [Path(summary["source"]), *map(Path, summary["models"]), run_dir / REPORT_FILE]
        best = run_config.get("best") or {}
        is_best = config.weights == "best" or best.get("step") == run_config.get("final_step")
        aliases = ["latest", f"step-{summary['step']}"] + ["best"] * is_best
        metadata = {"run_name": run_dir.name, "step": summary["step"], "selected": config.weights, "exported": True,
                    "num_classes": run_config.get("num_classes", 0), "latent_dim": run_config.get("latent_dim"),
                    **({"fid": best["fid"]} if is_best and "fid" in best else {})}
        sync = log_export(run_dir, {**run_config, "wandb_run_id": wandb_run_id}, files, aliases, metadata)
        print(f"logged {', '.join(path.name for path in files)} as a version of W&B model artifact "
              f"{model_artifact_name(wandb_run_id)} ({', '.join(aliases)})"
              + (f"; W&B is offline: upload it with `{sync}`" if sync else ""))
    if config.push_to_hub:
        print(f"pushed to {push_to_hub(run_dir, config.hub_model_id, config.private)}")


def verify(generator: Generator, files: list[tuple[Path, Path, str]]) -> dict[str, Any]:
    """The verification part of the export summary for ``files``: (temporary path, final path, precision)."""
    reports = [verify_onnx(path, generator, precision, final_path) for path, final_path, precision in files]
    return {
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "verify_batches": list(VERIFY_BATCHES),
        "verify_seed": VERIFY_SEED,
        "reports": reports,
        "passed": all(report["passed"] for report in reports),
    }


def verification_failure(summary: dict[str, Any], run_dir: Path) -> ExportError:
    """Write the failed summary beside the good report, print its table, and return the error that names it."""
    failed_path = run_dir / FAILED_REPORT_FILE
    write_json(failed_path, summary)
    print(format_table(summary["reports"]))
    failures = "\n".join(f"  - {Path(r['model']).name}: {f}" for r in summary["reports"] for f in r["failures"])
    return ExportError(
        f"verification failed (details in {failed_path}); no file was replaced, an earlier export is unchanged:\n"
        f"{failures}"
    )
