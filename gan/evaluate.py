"""Sample quality of a saved generator, or (re)training the classifier that measures it.

    python -m gan.evaluate RUN_DIR|MODEL.onnx --n 10000 [--data-dir data --split test] [--json OUT]
    python -m gan.evaluate train-classifier --data-dir data --split test [--out WEIGHTS.safetensors]

The first prints a table of the metrics (see :mod:`gan.evaluation`) next to the real-vs-real floor and writes
them as JSON (default: ``RUN_DIR/evaluation.json``, or ``MODEL.evaluation.json`` beside an ONNX file). The
second writes gan/assets/kmnist_classifier.safetensors and its record kmnist_classifier.json by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gan.artifacts import ArtifactError, versions, write_json_atomic
from gan.data import SPLITS, DataError, load_kmnist
from gan.evaluation import (
    CLASSIFIER_WEIGHTS,
    CONFIDENCE_THRESHOLD,
    METRIC_NAMES,
    ClassifierTraining,
    EvaluationError,
    Evaluator,
    generate,
    open_generator,
    record_path,
    save_classifier,
    train_classifier,
)

TRAIN_COMMAND = "train-classifier"
HIGHER_IS_BETTER = {"fid": False, "kid": False, "kid_std": None}  # the rest: higher is better


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.evaluate",
        description="Measure a generator's samples against real KMNIST images in a KMNIST classifier's "
        f"feature space. (`python -m gan.evaluate {TRAIN_COMMAND} --help`: remake that classifier.)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", metavar="RUN_DIR|MODEL.onnx", help="a training run folder or an exported model")
    parser.add_argument("--n", type=int, default=10_000, help="number of samples to generate")
    parser.add_argument("--data-dir", default="data", help="folder that holds KMNIST/raw/ (never downloads)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="the real images to compare against")
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default="data", help="folder that holds KMNIST/raw/ (never downloads)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="the labelled images to train on")
    parser.add_argument("--out", default=str(CLASSIFIER_WEIGHTS), help="weights file to write (.safetensors)")
    parser.add_argument("--device", default="cpu", help="training device")
    for spec in dataclasses.fields(ClassifierTraining):
        flag = "--" + spec.name.replace("_", "-")
        parser.add_argument(
            flag, dest=spec.name, type=type(spec.default), default=spec.default, help=spec.metadata["help"]
        )
    return parser


def run_training(argv: list[str]) -> int:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    settings = ClassifierTraining(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifierTraining)})
    problems = settings.problems()
    if problems:
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: invalid arguments:\n" + "".join(f"  - {p}\n" for p in problems))
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
        "round(images * holdout_fraction) indices are held out (gan.evaluation.holdout_split)",
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
    problems = [
        f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
        for name in ("n", "k", "kid_subsets", "batch_size")
        if getattr(args, name) < 1
    ]
    if args.n <= args.k:
        problems.append(f"--n must exceed --k ({args.k}) to estimate precision and recall, got {args.n}")
    if problems:
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: invalid arguments:\n" + "".join(f"  - {p}\n" for p in problems))

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    sampler, latent_dim, kind = open_generator(args.source, args.device)
    images = generate(sampler, latent_dim, args.n, args.seed, args.batch_size)
    seconds["generate"], clock = time.perf_counter() - clock, time.perf_counter()
    evaluator = Evaluator(
        args.data_dir,
        args.split,
        args.device,
        classifier_path=args.classifier,
        k=args.k,
        kid_subsets=args.kid_subsets,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    seconds["load_reference"], clock = time.perf_counter() - clock, time.perf_counter()
    metrics = evaluator.evaluate(images)
    seconds["evaluate"], clock = time.perf_counter() - clock, time.perf_counter()
    floor = evaluator.real_floor()
    seconds["real_floor"] = time.perf_counter() - clock

    half = len(evaluator.real) // 2
    print(
        f"{kind} generator {args.source}: {args.n} samples (seed {args.seed}) vs {len(evaluator.real)} real "
        f"'{args.split}' images; floor: real half vs real half ({half} vs {half})"
    )
    print(format_table(metrics, floor))
    print("seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))

    json_path = Path(args.json_path) if args.json_path else default_json_path(Path(args.source), kind)
    record = evaluator.classifier_record
    payload: dict[str, Any] = {
        "source": str(args.source),
        "kind": kind,
        "samples": args.n,
        "seed": args.seed,
        "reference": {"data_dir": args.data_dir, "split": args.split, "images": len(evaluator.real)},
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
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, payload)
    print(f"wrote {json_path}")
    return 0


def default_json_path(source: Path, kind: str) -> Path:
    return source / "evaluation.json" if kind == "pytorch" else source.with_suffix(".evaluation.json")


def format_table(metrics: dict[str, float], floor: dict[str, float]) -> str:
    rows = [f"{'metric':<17} {'generated':>11} {'real floor':>11}  better"]
    for name in METRIC_NAMES:
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
