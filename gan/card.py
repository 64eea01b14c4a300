"""The Hugging Face model card of an exported run: ``RUN_DIR/README.md`` and the sample grid it shows.

    python -m gan.card RUN_DIR [--hub-model-id USER/NAME]

The card's front matter (YAML, read by the Hub) names the library, tags, license and dataset and, once
``python -m gan.evaluate RUN_DIR`` has written ``evaluation.json``, the evaluation results (``model-index``). Its text
says what the model is, shows ``card_samples.png`` (drawn by the exported ONNX model itself, so it shows what users of
the file get), the training recipe, which weights were exported, the ONNX interface, and how to run the model from
Python, Node.js and the browser. ``gan/hub.py`` publishes the card with the model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image
from safetensors import SafetensorError

from gan.artifacts import (
    CONFIG_FILE,
    EVALUATION_FILE,
    WEIGHTS,
    ArtifactError,
    generator_path,
    read_config,
    read_generator_metadata,
)
from gan.atomic_write import atomic_path
from gan.cli import HelpFormatter, exit_with_problems
from gan.export import DATASET, MODEL_FILE, REPORT_FILE, fp16_path
from gan.noise import grid_inputs
from gan.onnx_generator import LABELS_NAME, ModelError, OnnxGenerator, to_uint8
from gan.pictures import grid_image

CARD_FILE = "README.md"  # the Hub shows a repo's README.md as its model card
SAMPLES_FILE = "card_samples.png"
CARD_SEED = 0
SAMPLE_SCALE = 3  # screen pixels per image pixel: a 28x28 character is a speck on a web page
PLACEHOLDER_REPO = "USER/NAME"  # in the usage snippets of a card written before the repo is known
DATASET_ID = "kmnist"
TAGS = ["gan", "dcgan", "kmnist", "kuzushiji", "onnx", "image-generation"]
CONDITIONAL_TAG = "class-conditional"
# (evaluation.json metric, model-index metric type, name shown on the Hub): the headline numbers; the card's text
# has all of them.
CARD_METRICS = (
    ("fid", "fid", "FID (KMNIST-classifier features)"),
    ("kid", "kid", "KID (KMNIST-classifier features)"),
    ("class_coverage", "coverage", "Class coverage"),
    ("precision", "precision", "Precision (k-NN, k=3)"),
    ("recall", "recall", "Recall (k-NN, k=3)"),
)
CONDITIONAL_CARD_METRICS = (("class_accuracy", "accuracy", "Class accuracy"),)


class CardError(RuntimeError):
    """The run cannot be described: not exported, or a file it needs is missing or corrupt; says what to do."""


@dataclass(frozen=True)
class ExportedWeights:
    """Which generator the ONNX file holds: the run's "final" one, or its "best" (lowest FID during training)."""

    which: str
    path: Path  # its safetensors file in the run folder
    step: int | None  # None: not known (the best weights' file is missing)
    metrics: dict[str, float] | None  # the best weights' evaluation, from their file's metadata


@dataclass(frozen=True)
class CardRun:
    """Everything the card says about a run, read once from its folder."""

    run_dir: Path
    config: dict[str, Any]  # config.json
    report: dict[str, Any] | None  # export_report.json; None when exported with --no-verify
    evaluation: dict[str, Any] | None  # evaluation.json; None before `python -m gan.evaluate`
    weights: ExportedWeights
    generator: OnnxGenerator  # the exported generator.onnx

    @property
    def name(self) -> str:
        return str(self.config.get("run_name") or self.run_dir.name)

    @property
    def conditional(self) -> bool:
        return self.generator.num_classes > 0

    @property
    def evaluated(self) -> dict[str, Any] | None:
        """evaluation.json when it measured the exported weights, else None."""
        return self.evaluation if measures(self.evaluation, self.weights.which) else None


# ------------------------------------------------------------------------------------------------------------
# Reading the run folder
# ------------------------------------------------------------------------------------------------------------


def read_json(path: Path, written_by: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, None if there is no such file; a :class:`CardError` if it is not one."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CardError(f"{path} is not valid JSON ({error}); write it again with `{written_by}`") from None
    if not isinstance(payload, dict):
        raise CardError(f"{path} holds a JSON {type(payload).__name__}, not an object; write it again with "
                        f"`{written_by}`")
    return payload


def exported_which(run_dir: Path, report: dict[str, Any] | None) -> str:
    """Which weights export.py exported: export_report.json's "weights" ("final" when it does not say)."""
    which = (report or {}).get("weights", "final")
    if which not in WEIGHTS:
        raise CardError(f"{run_dir / REPORT_FILE} names the weights {which!r}, not one of {', '.join(WEIGHTS)}; "
                        f"export again with `python export.py {run_dir}`")
    return which


def exported_weights(run_dir: Path, report: dict[str, Any] | None, config: dict[str, Any]) -> ExportedWeights:
    """The weights export.py exported, with their step and, for the best ones, the evaluation that chose them (their
    file's metadata "step" and "metrics")."""
    which = exported_which(run_dir, report)
    path = generator_path(run_dir, which)
    step = (report or {}).get("step", config.get("final_step") if which == "final" else None)
    if which == "final" or not path.is_file():  # without the best file, the card says what it cannot know
        return ExportedWeights(which, path, step, None)
    try:
        metadata = read_generator_metadata(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CardError(f"{path} is not a readable safetensors file with JSON metrics ({error}); it is corrupt or "
                        f"truncated: restore it or export the final weights") from None
    return ExportedWeights(which, path, metadata.get("step"), metadata.get("metrics"))


def measures(evaluation: dict[str, Any] | None, which: str) -> bool:
    """Whether an evaluation.json measured the run's ``which`` weights (older files, without "weights": the final)."""
    return evaluation is not None and evaluation.get("weights", "final") == which


def fp16_exported(run_dir: Path, report: dict[str, Any] | None) -> bool:
    """Whether ``generator.fp16.onnx`` belongs to the export the report describes (an earlier export's is stale)."""
    fp16 = fp16_path(run_dir / MODEL_FILE)
    exported = {Path(model).name for model in (report or {}).get("models", [])}
    return fp16.is_file() and (report is None or fp16.name in exported)


def read_run(run_dir: Path) -> CardRun:
    """The run's files as the card needs them; a :class:`CardError` for a run that is not exported or whose files
    are missing or corrupt."""
    model = run_dir / MODEL_FILE
    if not model.is_file():
        raise CardError(f"{run_dir} has no {MODEL_FILE}: the run is not exported. Export it first: "
                        f"python export.py {run_dir}")
    try:
        config = read_config(run_dir)
        generator = OnnxGenerator(model)
    except (ArtifactError, ModelError) as error:
        raise CardError(str(error)) from None
    report = read_json(run_dir / REPORT_FILE, f"python export.py {run_dir}")
    evaluation = read_json(run_dir / EVALUATION_FILE, f"python -m gan.evaluate {run_dir}")
    if evaluation is not None and not isinstance(evaluation.get("metrics"), dict):
        raise CardError(f"{run_dir / EVALUATION_FILE} has no \"metrics\" object: it was not written by "
                        f"gan.evaluate. Evaluate again: python -m gan.evaluate {run_dir}")
    return CardRun(run_dir, config, report, evaluation, exported_weights(run_dir, report, config), generator)


# ------------------------------------------------------------------------------------------------------------
# The sample grid
# ------------------------------------------------------------------------------------------------------------


def sample_grid(generator: OnnxGenerator, seed: int = CARD_SEED) -> np.ndarray:
    """The card's picture as uint8 [H, W]: the 64 sample images of ``seed`` 8x8, or for a conditional model 8 of
    each class, a row per class (:func:`gan.noise.grid_inputs`: the images of the run's samples_final.png for
    that seed), each pixel shown as SAMPLE_SCALE x SAMPLE_SCALE."""
    z, labels = grid_inputs(seed, "samples", generator.latent_dim, generator.num_classes)
    images = to_uint8(generator.generate_raw(z, labels))[:, 0]
    return np.kron(grid_image(images), np.ones((SAMPLE_SCALE, SAMPLE_SCALE), dtype=np.uint8))


def write_samples(run: CardRun) -> Path:
    """``RUN_DIR/card_samples.png``, drawn by the exported ONNX model (atomically)."""
    path = run.run_dir / SAMPLES_FILE
    try:
        grid = sample_grid(run.generator)
    except ModelError as error:  # NaN/inf images: a diverged run, not worth a card
        raise CardError(str(error)) from None
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------------------
# The front matter
# ------------------------------------------------------------------------------------------------------------


def eval_results(run: CardRun, model_name: str) -> list[EvalResult]:
    """The headline metrics of evaluation.json as model-index entries (empty before an evaluation); non-finite
    values (a diverged run) are left to the card's text, as YAML has no portable NaN."""
    if run.evaluated is None:  # none, or of other weights: results that would misdescribe this model
        return []
    metrics = run.evaluation["metrics"]
    chosen = CARD_METRICS + (CONDITIONAL_CARD_METRICS if run.conditional else ())
    task = ("image-generation", "Class-conditional image generation") if run.conditional else (
        "unconditional-image-generation", "Unconditional image generation")
    split = run.evaluation.get("reference", {}).get("split", run.config.get("split"))
    return [
        EvalResult(
            task_type=task[0],
            task_name=task[1],
            dataset_type=DATASET_ID,
            dataset_name=DATASET,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=float(metrics[key]),
            metric_args={"samples": run.evaluation.get("samples"), "seed": run.evaluation.get("seed")},
        )
        for key, metric_type, name in chosen
        if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key])
    ]


def card_data(run: CardRun, repo_id: str | None) -> ModelCardData:
    """The card's metadata: library, tags, license, dataset and (after an evaluation) the results."""
    model_name = repo_id.split("/")[-1] if repo_id else f"kmnist-gan-{run.name}"
    results = eval_results(run, model_name)
    return ModelCardData(
        library_name="onnx",
        license="mit",
        datasets=[DATASET_ID],
        tags=TAGS + ([CONDITIONAL_TAG] if run.conditional else []),
        pipeline_tag=None if run.conditional else "unconditional-image-generation",
        model_name=model_name if results else None,
        eval_results=results or None,
    )


# ------------------------------------------------------------------------------------------------------------
# The text
# ------------------------------------------------------------------------------------------------------------


def class_list(generator: OnnxGenerator) -> str:
    """'0 お (o), 1 き (ki), ...'."""
    return generator.classes.describe() if generator.classes is not None else ""


def intro_section(run: CardRun) -> str:
    kind = "class-conditional DCGAN" if run.conditional else "DCGAN"
    text = [
        f"# kmnist-gan: a {kind} for Kuzushiji-MNIST (run `{run.name}`)",
        "",
        f"A {kind} generator (the chapter's DCGAN: transposed convolutions with BatchNorm and ReLU, a tanh output) "
        f"trained on [Kuzushiji-MNIST](https://github.com/rois-codh/kmnist) (KMNIST: 28x28 grayscale images of 10 "
        f"cursive Japanese hiragana) with kmnist-gan, then exported to one self-contained ONNX file, "
        f"`{MODEL_FILE}`, that runs with onnxruntime alone (no PyTorch) in Python, Node.js and the browser.",
    ]
    if run.conditional:
        text += ["", f"It is class-conditional: a second input, `{LABELS_NAME}`, chooses which character each image "
                     f"shows. Its {run.generator.num_classes} classes: {class_list(run.generator)}."]
    return "\n".join(text)


def samples_section(run: CardRun) -> str:
    if run.conditional:
        last = run.generator.num_classes - 1
        layout = (f"8 images of each class, a row per class, from 0 {run.generator.class_names[0]} at the top to "
                  f"{last} {run.generator.class_names[last]} at the bottom (what the run's `samples_final.png` "
                  f"shows for `--seed {CARD_SEED}`)")
    else:
        layout = f"64 images, 8x8 (`OnnxGenerator.generate(64, seed={CARD_SEED})`)"
    return (f"## Samples\n\n![Samples drawn by {MODEL_FILE}]({SAMPLES_FILE})\n\n"
            f"Drawn by `{MODEL_FILE}` itself from the sample noise of seed {CARD_SEED}: {layout}.")


def recipe_section(run: CardRun) -> str:
    config = run.config

    def value(key: str, fallback: str = "not recorded") -> str:
        return fallback if config.get(key) is None else str(config[key])

    lr = config.get("lr_generator", config.get("lr"))
    lr_discriminator = config.get("lr_discriminator", lr)
    rows = [
        ("steps", value("final_step")),
        ("processes (world size)", value("world_size")),
        ("mixed precision", value("mixed_precision", "no")),
        ("seed", value("seed")),
        ("global batch size", value("batch_size")),
        ("epochs", value("epochs")),
        ("learning rate (generator / discriminator)", f"{lr} / {lr_discriminator}" if lr is not None
         else "not recorded"),
        ("EMA decay", value("ema_decay") + (" (off)" if config.get("ema_decay") == 0 else "")),
        ("classes", value("num_classes", "0") + ("" if config.get("num_classes") else " (unconditional)")),
        ("data", f"KMNIST '{value('split')}' split"),
        ("latent size / base width", f"{value('latent_dim')} / {value('base_width')}"),
    ]
    if config.get("num_classes"):  # what the conditional model adds to the chapter's (gan/models.py)
        rows.append(("class loss weight / mismatch loss weight / conditional BatchNorm",
                     f"{value('class_loss_weight', '0')} / {value('mismatch_loss_weight', '0')} / "
                     f"{'on' if config.get('class_norm') else 'off'}"))
    table = "\n".join(f"| {name} | {setting} |" for name, setting in rows)
    return (f"## Training recipe\n\nFrom the run's `{CONFIG_FILE}` (every setting, the devices and library versions; "
            f"published with the model):\n\n| setting | value |\n|---|---|\n{table}")


def weights_section(run: CardRun) -> str:
    weights, config = run.weights, run.config
    if weights.which == "final":
        ema = config.get("generator_weights") == "ema"
        which = f"the EMA weights (decay {config.get('ema_decay')})" if ema else "the trained weights (no EMA)"
        text = f"The run's final generator, at step {weights.step}: {which}."
    else:
        fid = (weights.metrics or {}).get("fid")
        step = "an unknown step" if weights.step is None else f"step {weights.step}"
        measured = f", FID {fid:.2f} in the in-training evaluation" if isinstance(fid, (int, float)) else ""
        missing = ("" if weights.path.is_file() else f" (its file `{weights.path.relative_to(run.run_dir)}` is not "
                   f"in the run folder, so its evaluation is not known here)")
        text = (f"The run's best generator (the lowest FID of the evaluations during training, `--eval-every`): "
                f"{step}{measured}{missing}; the run trained to step {config.get('final_step')}.")
    return (f"## Exported weights: {weights.which}\n\n{text} `generator.safetensors` holds the same weights for "
            f"PyTorch (`gan.models.Generator`, loaded by `gan.artifacts.load_generator`).")


def verification(report: dict[str, Any] | None) -> str:
    """One sentence on export.py's check of the file against PyTorch (nothing when exported with --no-verify)."""
    if not report or not report.get("reports"):
        return "It was exported without verification (`--no-verify`)."
    fp32 = report["reports"][0]
    diffs = [entry["max_abs_diff"] for entry in fp32.get("batches", []) if "max_abs_diff" in entry]
    batches = ", ".join(str(entry["batch"]) for entry in fp32.get("batches", []))
    largest = f"max abs diff {max(diffs):.1e}" if diffs else "no difference recorded"
    return (f"`export.py` verified it: `onnx.checker` (full check) and onnxruntime against PyTorch at batch "
            f"{batches}: {largest} (bound {fp32.get('tolerance')}); the numbers are in `{REPORT_FILE}`.")


def io_row(kind: str, node) -> str:
    """A table row for one of the model's inputs or outputs: "| input | `z` | float32 | [batch, 100] |"."""
    dtype = {"tensor(float)": "float32", "tensor(int64)": "int64"}.get(node.type, node.type)
    return f"| {kind} | `{node.name}` | {dtype} | [{', '.join(map(str, node.shape))}] |"


def interface_section(run: CardRun) -> str:
    session, generator = run.generator.session, run.generator
    rows = [io_row("input", node) for node in session.get_inputs()]
    rows += [io_row("output", node) for node in session.get_outputs()]
    labels = (f"\n- `{LABELS_NAME}`: int64 `[batch]`, the class of each image (0 to {generator.num_classes - 1}: "
              f"{class_list(generator)})." if run.conditional else "")
    fp16_model = fp16_path(run.run_dir / MODEL_FILE)
    fp16 = (f"\n\n`{fp16_model.name}`: the same model with fp16 weights and fp32 input and output, half the size."
            if fp16_exported(run.run_dir, run.report) else "")
    metadata = ", ".join(f"`{key}`" for key in sorted(generator.metadata))
    return (
        "## ONNX interface\n\n| | name | type | shape |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"- `z`: float32 `[batch, {generator.latent_dim}]`, standard normal noise.{labels}\n"
        f"- `images`: float32 `[batch, 1, 28, 28]` in [-1, 1]; pixels = round((x + 1) * 127.5).\n\n"
        f"The file's metadata (`session.get_modelmeta().custom_metadata_map`) holds {metadata}. "
        f"{verification(run.report)}{fp16}"
    )


def usage_section(run: CardRun, repo_id: str | None) -> str:
    repo = repo_id or PLACEHOLDER_REPO
    latent_dim, conditional = run.generator.latent_dim, run.conditional
    placeholder = f" (`{PLACEHOLDER_REPO}`: the repo this card is published in)" if repo_id is None else ""
    classes = run.generator.num_classes
    feeds = f'{{"z": z, "labels": np.arange(16, dtype=np.int64) % {classes}}}' if conditional else '{"z": z}'
    label_line = ('\nimages = generator.generate(8, seed=0, labels="つ")  # 8 of class 3 (also labels=3 or "tsu")'
                  if conditional else "")
    label_flag = " [--label つ]" if conditional else ""
    noise_code = (f"import numpy as np; np.save('noise.npy', np.random.default_rng(0).standard_normal((16, "
                  f"{latent_dim}), dtype=np.float32))")
    return f"""## Usage{placeholder}

Python, with onnxruntime and numpy only (`pip install onnxruntime numpy huggingface_hub`):

```python
import numpy as np
import onnxruntime as ort
from huggingface_hub import hf_hub_download

session = ort.InferenceSession(hf_hub_download("{repo}", "{MODEL_FILE}"), providers=["CPUExecutionProvider"])
z = np.random.default_rng(0).standard_normal((16, {latent_dim}), dtype=np.float32)
images = session.run(["images"], {feeds})[0]  # float32 [16, 1, 28, 28] in [-1, 1]
pixels = np.rint((images[:, 0] + 1) * 127.5).astype(np.uint8)  # uint8 [16, 28, 28]
```

With kmnist-gan's `OnnxGenerator` (cached download, works offline from the cache):

```python
from gan.onnx_generator import OnnxGenerator

generator = OnnxGenerator.from_pretrained("{repo}")
images = generator.generate(64, seed=0)  # uint8 [64, 28, 28]{label_line}
```

Node.js (`examples/node` of kmnist-gan, onnxruntime-node), on float32 noise saved with `np.save`:

```bash
hf download {repo} {MODEL_FILE} --local-dir model
python -c "{noise_code}"
cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci
node generate.mjs ../../model/{MODEL_FILE} ../../noise.npy out/{label_flag}   # out/grid.png, out/images.npy
```

The browser (`examples/web` of kmnist-gan, onnxruntime-web):

```bash
cd examples/web && npm ci && cd ../..
python examples/web/serve.py --model model/{MODEL_FILE}   # then open http://127.0.0.1:8000/
```"""


def metric_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def evaluation_section(run: CardRun) -> str:
    if run.evaluation is None:
        return (f"## Evaluation\n\nNot evaluated yet. `python -m gan.evaluate RUN_DIR` (the run folder) writes "
                f"`RUN_DIR/{EVALUATION_FILE}`; then `python -m gan.card RUN_DIR` puts its numbers here and in the "
                f"card's metadata.")
    if run.evaluated is None:
        measured, which = run.evaluation.get("weights", "final"), run.weights.which
        return (f"## Evaluation\n\n`{EVALUATION_FILE}` measured the run's {measured} weights, not the exported "
                f"{which} ones, so its numbers are not shown here. `python -m gan.evaluate RUN_DIR --weights {which}` "
                f"measures these; then `python -m gan.card RUN_DIR` puts the numbers here and in the card's metadata.")
    evaluation = run.evaluation
    floor = evaluation.get("real_floor", {}).get("metrics", {})
    rows = "\n".join(f"| `{name}` | {metric_value(value)} | {metric_value(floor.get(name, ''))} |"
                     for name, value in evaluation["metrics"].items())
    reference = evaluation.get("reference", {})
    classifier = evaluation.get("classifier", {})
    return (
        f"## Evaluation\n\nMeasured by kmnist-gan's evaluator (`python -m gan.evaluate`): FID, KID, precision and "
        f"recall in the feature space of a small KMNIST classifier (not Inception, which judges 28x28 characters "
        f"poorly; weights SHA-256 `{classifier.get('weights_sha256', '?')}`), on {evaluation.get('samples')} "
        f"samples (seed {evaluation.get('seed')}) of the {evaluation.get('kind', '?')} generator against the "
        f"{reference.get('images', '?')} real images of the '{reference.get('split', '?')}' split. The floor is one "
        f"real half against the other: what a perfect generator would score.\n\n"
        f"| metric | this model | real vs real |\n|---|---:|---:|\n{rows}\n\nAll numbers: `{EVALUATION_FILE}`."
    )


def data_section() -> str:
    return (
        "## Training data\n\n"
        "KMNIST, by the ROIS-DS Center for Open Data in the Humanities (CODH), is licensed CC BY-SA 4.0; the model's "
        "own license (MIT) covers the weights and code of this repo, not the data. If you use the data or this "
        "model in research, cite: Tarin Clanuwat, Mikel Bober-Irizar, Asanobu Kitamoto, Alex Lamb, Kazuaki "
        "Yamamoto, David Ha, *Deep Learning for Classical Japanese Literature*, arXiv:1812.01718 (2018)."
    )


def card_text(run: CardRun, repo_id: str | None) -> str:
    sections = [intro_section(run), samples_section(run), recipe_section(run), weights_section(run),
                interface_section(run), usage_section(run, repo_id), evaluation_section(run), data_section()]
    return "\n\n".join(sections) + "\n"


# ------------------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------------------


def build_card(run_dir: Path, repo_id: str | None = None) -> ModelCard:
    """The model card of the exported run in ``run_dir``; also writes the picture it shows, ``card_samples.png``.

    ``repo_id`` (``USER/NAME``) is named in the usage snippets; without it they say ``USER/NAME``. A
    :class:`CardError` for a run that is not exported or whose files are missing or corrupt.
    """
    run = read_run(Path(run_dir))
    write_samples(run)
    return ModelCard(f"---\n{card_data(run, repo_id).to_yaml()}\n---\n\n{card_text(run, repo_id)}")


def write_card(run_dir: Path, repo_id: str | None = None) -> Path:
    """``RUN_DIR/README.md`` (atomically) and ``RUN_DIR/card_samples.png``; returns the card's path."""
    card = build_card(run_dir, repo_id)
    path = Path(run_dir) / CARD_FILE
    with atomic_path(path) as tmp:
        card.save(tmp)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.card",
        description=f"Write the Hugging Face model card of an exported run: RUN_DIR/{CARD_FILE} and the sample grid "
        f"it shows, RUN_DIR/{SAMPLES_FILE}.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder exported with export.py")
    parser.add_argument("--hub-model-id", metavar="USER/NAME",
                        help="the Hub repo the card is for, named in its usage snippets (default: USER/NAME)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from gan.hub import repo_id_problem  # gan.hub writes cards with this module: imported here, not in a cycle

    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    problems = [] if run_dir.is_dir() else [f"RUN_DIR {run_dir} is not a folder; give a training run folder"]
    problem = repo_id_problem(args.hub_model_id) if args.hub_model_id is not None else None
    exit_with_problems(parser, problems + ([f"--hub-model-id {problem}"] if problem else []))
    try:
        path = write_card(run_dir, args.hub_model_id)
    except CardError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{parser.prog}: error: cannot write in {run_dir} ({error.strerror or error})", file=sys.stderr)
        return 1
    print(f"wrote {path} and {run_dir / SAMPLES_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
