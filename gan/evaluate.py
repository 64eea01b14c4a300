"""Sample quality of a saved generator, or (re)training the classifier that measures it.

    python -m gan.evaluate RUN_DIR|MODEL.onnx --n 10000 [--data-dir DIR --split SPLIT] [--json OUT]
    python -m gan.evaluate train-classifier --data-dir data --split test [--out WEIGHTS.safetensors]

The first prints a table of the metrics (see :mod:`gan.metrics`) next to the real-vs-real floor and writes
them as JSON (default: ``RUN_DIR/evaluation.json``, or ``MODEL.evaluation.json`` beside an ONNX file). It compares
against the data the run trained on: ``--data-dir`` and ``--split`` default to the ``data_dir`` and ``split`` of
the run's ``config.json`` (the run folder's, or the one beside the ONNX file), else to ``data`` and ``test``.
The second writes gan/assets/kmnist_classifier.safetensors and its record kmnist_classifier.json by default.
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

from gan.artifacts import CONFIG_FILE, ArtifactError, read_config, versions
from gan.atomic_write import write_json
from gan.classifier import (
    CLASSIFIER_WEIGHTS,
    ClassifierTraining,
    EvaluationError,
    record_path,
    save_classifier,
    train_classifier,
)
from gan.cli import HelpFormatter, add_dataclass_flags, at_least_one, exit_with_problems, flag_name
from gan.data import SPLITS, DataError, MissingDataError, load_kmnist
from gan.metrics import CONFIDENCE_THRESHOLD, QUALITY_METRICS, Evaluator
from gan.samplers import generate, open_generator

TRAIN_COMMAND = "train-classifier"
HIGHER_IS_BETTER = {"fid": False, "kid": False, "kid_std": None}  # the rest: higher is better
# Without flags and without a run config.json: the reference of the shipped classifier's record.
FALLBACK_REFERENCE = {"data_dir": "data", "split": "test"}


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.evaluate",
        description="Measure a generator's samples against real KMNIST images in a KMNIST classifier's "
        f"feature space. (`python -m gan.evaluate {TRAIN_COMMAND} --help`: remake that classifier.)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("source", metavar="RUN_DIR|MODEL.onnx", help="a training run folder or an exported model")
    parser.add_argument("--n", type=int, default=10_000, help="number of samples to generate")
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
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise, KID subsets and the real halves")
    parser.add_argument("--k", type=int, default=3, help="neighbours that set the precision/recall radii")
    parser.add_argument("--kid-subsets", type=int, default=100, help="random subsets KID averages over")
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


def run_training(argv: list[str]) -> int:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    settings = ClassifierTraining(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifierTraining)})
    exit_with_problems(parser, settings.problems())
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


def run_evaluation(argv: list[str]) -> int:
    parser = build_evaluate_parser()
    args = parser.parse_args(argv)
    problems = at_least_one({"n": args.n, "k": args.k, "kid_subsets": args.kid_subsets, "batch_size": args.batch_size})
    if args.n <= args.k:
        problems.append(f"--n must exceed --k ({args.k}) to estimate precision and recall, got {args.n}")
    exit_with_problems(parser, problems)

    source = Path(args.source)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    sampler, latent_dim, kind = open_generator(source, args.device)
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
    images = generate(sampler, latent_dim, args.n, args.seed, args.batch_size)
    seconds["generate"], clock = time.perf_counter() - clock, time.perf_counter()
    metrics = evaluator.evaluate(images)
    seconds["evaluate"], clock = time.perf_counter() - clock, time.perf_counter()
    floor = evaluator.real_floor()
    seconds["real_floor"] = time.perf_counter() - clock

    half = len(evaluator.real) // 2
    print(
        f"{kind} generator {args.source}: {args.n} samples (seed {args.seed}) vs {len(evaluator.real)} real "
        f"'{reference.split}' images; floor: real half vs real half ({half} vs {half})"
    )
    print(format_table(metrics, floor))
    print("seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))

    json_path = Path(args.json_path) if args.json_path else default_json_path(source, kind)
    record = evaluator.classifier_record
    payload: dict[str, Any] = {
        "source": str(args.source),
        "kind": kind,
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
        "metrics": metrics,
        "real_floor": {"images": [half, half], "metrics": floor},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "versions": versions(),
    }
    write_json(json_path, payload)
    print(f"wrote {json_path}")
    return 0


def default_json_path(source: Path, kind: str) -> Path:
    return source / "evaluation.json" if kind == "pytorch" else source.with_suffix(".evaluation.json")


def format_table(metrics: dict[str, float], floor: dict[str, float]) -> str:
    rows = [f"{'metric':<17} {'generated':>11} {'real floor':>11}  better"]
    for name in QUALITY_METRICS:
        better = {False: "lower", True: "higher", None: ""}[HIGHER_IS_BETTER.get(name, True)]
        rows.append(f"{name:<17} {_number(metrics[name]):>11} {_number(floor[name]):>11}  {better}")
    return "\n".join(rows)


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
