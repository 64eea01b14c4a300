"""Sample quality of a saved generator, or (re)training the classifier that measures it.

    python -m gan.evaluate RUN_DIR|MODEL.onnx --n 10000 [--data-dir DIR --split SPLIT] [--json OUT]
    python -m gan.evaluate train-classifier --data-dir data --split test [--out WEIGHTS.safetensors]

The first prints a table of the metrics (see :mod:`gan.metrics`) next to the real-vs-real floor and writes
them as JSON (default: ``RUN_DIR/evaluation.json``, or ``MODEL.evaluation.json`` beside an ONNX file). For a
class-conditional generator (a run whose config.json has num_classes, or an ONNX model whose metadata has) it asks
for every class in turn and adds the per-class metrics and a row per class. It compares against the data the run
trained on: ``--data-dir`` and ``--split`` default to the ``data_dir`` and ``split`` of the run's ``config.json``
(the run folder's, or the one beside the ONNX file), else to ``data`` and ``test``. The second
writes gan/assets/kmnist_classifier.safetensors and its record kmnist_classifier.json by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from gan.artifacts import CONFIG_FILE, EVALUATION_FILE, WEIGHTS, ArtifactError, read_config, versions
from gan.atomic_write import write_json
from gan.classifier import (
    CLASSIFIER_WEIGHTS,
    ClassifierTraining,
    EvaluationError,
    holdout_split,
    record_path,
    save_classifier,
    train_classifier,
)
from gan.cli import HelpFormatter, add_dataclass_flags, at_least_one, exit_with_problems, flag_name
from gan.config import MAX_EVAL_SAMPLES
from gan.data import CLASS_CHARACTERS, NUM_CLASSES, SPLIT_SIZES, SPLITS, DataError, MissingDataError, load_kmnist
from gan.metrics import (
    CONDITIONAL_METRICS,
    CONFIDENCE_THRESHOLD,
    PRECISION_RECALL_K,
    QUALITY_METRICS,
    ClassResult,
    Evaluator,
)
from gan.noise import seed_problem
from gan.paths import input_file_problem, output_file_problem
from gan.samplers import open_generator

TRAIN_COMMAND = "train-classifier"
SOURCE = "RUN_DIR|MODEL.onnx"
HIGHER_IS_BETTER = {  # the rest: higher is better
    "fid": False,
    "kid": False,
    "kid_std": None,
    "class_fid_mean": False,
    "class_fid_worst": False,
    "class_fid_worst_class": None,
}
# Without flags and without a run config.json: the reference of the shipped classifier's record.
FALLBACK_REFERENCE = {"data_dir": "data", "split": "test"}
# A typo guard: each KID subset takes about 0.15 s on 2 CPU cores, and the real floor computes KID again.
MAX_KID_SUBSETS = 1000


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.evaluate",
        description="Measure a generator's samples against real KMNIST images in a KMNIST classifier's "
        f"feature space. (`python -m gan.evaluate {TRAIN_COMMAND} --help`: remake that classifier.)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("source", metavar=SOURCE, help="a training run folder or an exported model")
    parser.add_argument(
        "--n", type=int, default=10_000, help=f"number of samples to make: more than --k, at most {MAX_EVAL_SAMPLES}"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder that holds KMNIST/raw/ (never downloads); default: the data_dir of the run's config.json, "
        f"else '{FALLBACK_REFERENCE['data_dir']}'",
    )
    parser.add_argument(
        "--split",
        default=None,
        choices=SPLITS,
        help="the real images to compare against; default: the split of the run's config.json, "
        f"else '{FALLBACK_REFERENCE['split']}'",
    )
    parser.add_argument(
        "--weights",
        default="final",
        choices=WEIGHTS,
        help="which generator of a run folder: its final one, or best/ (the lowest FID during training)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise, KID subsets and the real halves")
    parser.add_argument(
        "--k", type=int, default=PRECISION_RECALL_K, help="neighbours that set the precision/recall radii"
    )
    parser.add_argument(
        "--kid-subsets", type=int, default=100, help=f"random subsets KID averages over (at most {MAX_KID_SUBSETS})"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="images per generator/classifier call")
    parser.add_argument("--classifier", default=str(CLASSIFIER_WEIGHTS), help="classifier weights (.safetensors)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device of the PyTorch generator and the classifier (ONNX runs on CPU)",
    )
    parser.add_argument(
        "--json",
        dest="json_path",
        metavar="OUT",
        help="where to write the results (default: RUN_DIR/evaluation.json or MODEL.evaluation.json)",
    )
    return parser


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m gan.evaluate {TRAIN_COMMAND}",
        description="Train the KMNIST classifier whose features the evaluation uses; write its weights and, "
        "next to them, a .json record of how they were made (split, seed, held-out accuracy, settings).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data-dir", default="data", help="folder that holds KMNIST/raw/ (never downloads)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="the labelled images to train on")
    parser.add_argument("--out", default=str(CLASSIFIER_WEIGHTS), help="weights file to write (.safetensors)")
    parser.add_argument("--device", default="cpu", help="training device")
    add_dataclass_flags(parser, ClassifierTraining)
    return parser


# ------------------------------------------------------------------------------------------------------------
# The real images to compare against
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
    """The real images a generator is compared against, and where each choice came from."""

    data_dir: str
    split: str
    chosen_by: dict[str, str]  # "data_dir"/"split" -> "--data-dir"/"--split", a config.json path, or "fallback"
    run_config: Path | None = None  # the run's config.json, when one was found

    def describe(self) -> str:
        """Where the images are and why: "the 'test' split in data (data folder: run/config.json; split: --split)"."""
        origins = set(self.chosen_by.values())
        if len(origins) == 1:
            return f"the '{self.split}' split in {self.data_dir} (both from {origins.pop()})"
        return (
            f"the '{self.split}' split in {self.data_dir} (data folder: {self.chosen_by['data_dir']}; split: "
            f"{self.chosen_by['split']})"
        )


def run_config_path(source: Path) -> Path:
    """The config.json of the run a source belongs to: in the run folder, or beside the .onnx file."""
    return (source.parent if source.suffix == ".onnx" else source) / CONFIG_FILE


def resolve_reference(source: Path, data_dir: str | None, split: str | None) -> Reference:
    """--data-dir/--split when given; else the run's own data_dir/split (its config.json); else the fallbacks."""
    config_file = run_config_path(source)
    config = read_config(config_file.parent) if config_file.is_file() else {}
    chosen: dict[str, Any] = {}
    chosen_by: dict[str, str] = {}
    for name, flag_value in (("data_dir", data_dir), ("split", split)):
        if flag_value is not None:
            chosen[name], chosen_by[name] = flag_value, flag_name(name)
        elif config.get(name) is not None:
            chosen[name], chosen_by[name] = str(config[name]), str(config_file)
        else:
            chosen[name], chosen_by[name] = FALLBACK_REFERENCE[name], "fallback"
    if chosen["split"] not in SPLITS:
        raise ArtifactError(
            f"{config_file} names the split {chosen['split']!r}, not one of {', '.join(SPLITS)}: pass --split."
        )
    return Reference(chosen["data_dir"], chosen["split"], chosen_by, config_file if config else None)


@contextmanager
def advice_for_missing_data(note: str = "") -> Iterator[None]:
    """Turn a missing data file's advice (worded for the trainer) into advice about this command's flags."""
    try:
        yield
    except MissingDataError as error:
        message = error.advise(
            "gan.evaluate never downloads",
            "point --data-dir at the folder that holds KMNIST/raw/, or choose a split whose files you have with "
            "--split (e.g. --split test)",
        )
        raise DataError(message + note) from None


# ------------------------------------------------------------------------------------------------------------
# The two commands
# ------------------------------------------------------------------------------------------------------------


def device_problem(device: str) -> str | None:
    """Can torch use ``device`` here? Tried for real: a typo, a missing GPU and a wrong GPU index all fail."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, NotImplementedError) as error:
        return (
            f"--device {device!r} cannot be used here ({str(error).splitlines()[0]}); use --device cpu, or "
            f"cuda / cuda:N with a visible GPU"
        )
    return None


def training_problems(args: argparse.Namespace, settings: ClassifierTraining) -> list[str]:
    """Every problem with train-classifier's flags and paths, as flag-named sentences."""
    found = settings.problems()
    if not found:  # the held-out rule on the split's size: neither part may be empty
        train, held_out = holdout_split(SPLIT_SIZES[args.split], settings.holdout_fraction, settings.seed)
        if not (len(train) and len(held_out)):
            found.append(
                f"--holdout-fraction {settings.holdout_fraction} holds out {len(held_out)} of the "
                f"{SPLIT_SIZES[args.split]} '{args.split}' images; choose one that leaves images on both sides"
            )
    out = Path(args.out)
    if out.suffix != ".safetensors":
        found.append(f"--out must name a .safetensors file (its .json record goes beside it), got {args.out!r}")
    else:
        problem = output_file_problem(out, "--out") or output_file_problem(record_path(out), "--out")
        found += [problem] if problem else []
    return found + [problem for problem in [device_problem(args.device)] if problem]


def run_training(argv: list[str]) -> int:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    settings = ClassifierTraining(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifierTraining)})
    exit_with_problems(parser, training_problems(args, settings))
    with advice_for_missing_data():
        data = load_kmnist(args.data_dir, args.split, download=False)
    held_out = f"{settings.holdout_fraction:.0%} held out"
    print(f"training the classifier on {len(data)} '{args.split}' images ({held_out})")
    started = time.perf_counter()

    def report(epoch: int, train_loss: float, holdout_accuracy: float) -> None:
        print(
            f"epoch {epoch:>2}/{settings.epochs}  train loss {train_loss:.4f}  held-out accuracy "
            f"{holdout_accuracy:.4f}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    classifier, results = train_classifier(data.images, data.labels, settings, args.device, report)
    record = {
        "made_by": f"python -m gan.evaluate {TRAIN_COMMAND} " + shlex.join(argv),
        "data": {"split": args.split, "images": len(data)},
        "settings": dataclasses.asdict(settings),
        "holdout_rule": "torch.randperm(images, generator=torch.Generator().manual_seed(seed)); the last "
        "round(images * holdout_fraction) indices are held out (gan.classifier.holdout_split)",
        **results,
        "training_seconds": round(time.perf_counter() - started, 1),
        "versions": versions(),
    }
    save_classifier(classifier, args.out, record)
    print(
        f"held-out accuracy {results['holdout_accuracy']:.4f} on {results['holdout_images']} images; wrote "
        f"{args.out} and {record_path(args.out)}"
    )
    return 0


def source_problem(source: Path) -> str | None:
    """Is ``source`` an .onnx file or a folder (whose run files are checked when loaded)? The problem, or None."""
    if source.suffix == ".onnx":
        return input_file_problem(source, SOURCE, ".onnx file")
    if not source.is_dir():
        what = "is a file" if source.exists() else "does not exist"
        return f"{SOURCE} {source} {what}; give a training run folder or an .onnx file written by export.py"
    return None


def evaluation_problems(args: argparse.Namespace) -> list[str]:
    """Every problem with the evaluation's flags and paths, as flag-named sentences; the paths are tried for real."""
    found = at_least_one({"n": args.n, "k": args.k, "kid_subsets": args.kid_subsets, "batch_size": args.batch_size})
    if 1 <= args.n <= args.k:
        found.append(f"--n must exceed --k ({args.k}) to estimate precision and recall, got {args.n}")
    for name, bound in (("n", MAX_EVAL_SAMPLES), ("kid_subsets", MAX_KID_SUBSETS)):
        if getattr(args, name) > bound:
            found.append(f"{flag_name(name)} must be at most {bound}, got {getattr(args, name)}")
    source = source_problem(Path(args.source))
    if args.weights != "final" and Path(args.source).suffix == ".onnx":
        found.append(f"--weights chooses among a run folder's generators; {args.source} is one exported model "
                     f"(export the best weights with python export.py RUN_DIR --weights best)")
    classifier = input_file_problem(args.classifier, "--classifier", "classifier's .safetensors")
    checks = [seed_problem(args.seed), source, classifier]
    if args.json_path or source is None:  # the default lies in or beside the source: not where there is none
        checks.append(output_file_problem(results_path(args), "--json"))
    return found + [problem for problem in (*checks, device_problem(args.device)) if problem]


def run_evaluation(argv: list[str]) -> int:
    parser = build_evaluate_parser()
    args = parser.parse_args(argv)
    exit_with_problems(parser, evaluation_problems(args))

    source = Path(args.source)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    generator = open_generator(source, args.device, args.weights)
    exit_with_problems(parser, class_problems(args, generator.num_classes))
    reference = resolve_reference(source, args.data_dir, args.split)
    print(f"comparing against {reference.describe()}", flush=True)
    note = f" Without flags, both come from the run's {reference.run_config}." if reference.run_config else ""
    with advice_for_missing_data(note):
        evaluator = Evaluator(
            reference.data_dir,
            reference.split,
            args.device,
            classifier_path=args.classifier,
            k=args.k,
            kid_subsets=args.kid_subsets,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    seconds["load_reference"], clock = time.perf_counter() - clock, time.perf_counter()
    images, labels = generator.generate(args.n, args.seed, args.batch_size)
    seconds["generate"], clock = time.perf_counter() - clock, time.perf_counter()
    report = evaluator.report(images, labels)
    seconds["evaluate"], clock = time.perf_counter() - clock, time.perf_counter()
    floor = evaluator.real_floor(per_class_metrics=labels is not None)
    seconds["real_floor"] = time.perf_counter() - clock

    half = len(evaluator.real) // 2
    conditional = f", conditional on {generator.num_classes} classes" if generator.num_classes else ""
    which = f" ({args.weights} weights)" if generator.kind == "pytorch" else ""
    print(
        f"{generator.kind} generator {args.source}{which}{conditional}: {args.n} samples (seed {args.seed}) vs "
        f"{len(evaluator.real)} real '{reference.split}' images; floor: real half vs real half ({half} vs {half})"
    )
    print(format_table(report.metrics, floor))
    if report.classes:
        print(format_classes(report.classes))
    print("seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))

    json_path = results_path(args)
    record = evaluator.classifier_record
    payload: dict[str, Any] = {
        "source": str(args.source),
        "kind": generator.kind,
        **({"weights": args.weights} if generator.kind == "pytorch" else {}),
        "num_classes": generator.num_classes,
        "samples": args.n,
        "seed": args.seed,
        "reference": {
            "data_dir": reference.data_dir,
            "split": reference.split,
            "images": len(evaluator.real),
            "chosen_by": reference.chosen_by,
        },
        "settings": {"k": args.k, "kid_subsets": args.kid_subsets, "confidence_threshold": CONFIDENCE_THRESHOLD},
        "classifier": {
            "weights": str(args.classifier),
            "weights_sha256": record["weights_sha256"],
            "holdout_accuracy": record.get("holdout_accuracy"),
            "trained_on": record.get("data"),
        },
        "metrics": report.metrics,
        **(
            {"classes": [{**dataclasses.asdict(c), "character": c.character} for c in report.classes]}
            if report.classes
            else {}
        ),
        "real_floor": {"images": [half, half], "metrics": floor},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "versions": versions(),
    }
    write_json(json_path, payload)
    print(f"wrote {json_path}")
    return 0


def class_problems(args: argparse.Namespace, num_classes: int) -> list[str]:
    """What a conditional generator asks of the flags: --n large enough for every class's precision/recall."""
    if num_classes > NUM_CLASSES:
        return [
            f"{args.source} is conditional on {num_classes} classes, but the KMNIST classifier knows "
            f"{NUM_CLASSES}: its per-class metrics cannot be computed"
        ]
    needed = (args.k + 1) * num_classes  # the balanced labels of gan.noise.sample_labels: n / num_classes per class
    if num_classes and args.n < needed:
        return [
            f"--n must be at least {needed} for a generator conditional on {num_classes} classes (more than "
            f"--k {args.k} samples of each class), got {args.n}"
        ]
    return []


def results_path(args: argparse.Namespace) -> Path:
    """--json, else RUN_DIR/evaluation.json or MODEL.evaluation.json (an .onnx source is an ONNX model)."""
    source = Path(args.source)
    if args.json_path:
        return Path(args.json_path)
    return source.with_suffix(".evaluation.json") if source.suffix == ".onnx" else source / EVALUATION_FILE


def format_table(metrics: dict[str, float], floor: dict[str, float]) -> str:
    """The metrics beside the real floor: :data:`QUALITY_METRICS`, then :data:`CONDITIONAL_METRICS` if present."""
    rows = [f"{'metric':<21} {'generated':>11} {'real floor':>11}  better"]
    for name in (*QUALITY_METRICS, *(name for name in CONDITIONAL_METRICS if name in metrics)):
        better = {False: "lower", True: "higher", None: ""}[HIGHER_IS_BETTER.get(name, True)]
        show = _class_name if name == "class_fid_worst_class" else _number
        rows.append(f"{name:<21} {show(metrics[name]):>11} {show(floor[name]):>11}  {better}")
    return "\n".join(rows)


def format_classes(classes: list[ClassResult]) -> str:
    """One row per requested class: its samples against the real images of that class."""
    rows = [f"{'class':<8} {'samples':>8} {'accuracy':>9} {'fid':>9} {'precision':>10} {'recall':>8}"]
    for c in classes:
        rows.append(
            f"{_class_name(c.label):<8} {c.samples:>8} {c.accuracy:>9.4f} {c.fid:>9.3f} "
            f"{c.precision:>10.4f} {c.recall:>8.4f}"
        )
    return "\n".join(rows)


def _class_name(label: float) -> str:
    return f"{int(label)} {CLASS_CHARACTERS[int(label)]}"


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == [TRAIN_COMMAND]:
            return run_training(argv[1:])
        return run_evaluation(argv)
    except (ArtifactError, DataError, EvaluationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
