"""The class-conditional model against the chapter's unconditional default, at the chapter's budget, over seeds.

    python benchmarks/conditional_study.py --seeds 0 1 2 --data-dir ../shared/data --out conditional.json

Each variant is trained once per seed with ``train_ddp.py`` (a subprocess: 5 epochs on the 10,000-image test split,
batch 128, ``--report-to none --eval-every 0``, otherwise the trainer's defaults), then its final generator
(``generator.safetensors``: the EMA weights) is evaluated exactly as ``python -m gan.evaluate RUN_DIR --n 10000``
does (:func:`gan.samplers.open_generator`, :class:`gan.metrics.Evaluator`): 10,000 samples of the evaluation seed
against all 10,000 real test images, the conditional model's asked for the ten classes in turn, with the per-class
metrics against the real images of each class. Prints a markdown table of the means ± sample sd over seeds, the
per-seed numbers, the conditional model's per-class results, whether the issue's target is met (class accuracy
>= 0.95 and FID no worse than the unconditional default's) and the CPU it ran on.

Variants (``VARIANTS``): ``unconditional`` (the defaults) and ``conditional`` (the defaults with
``--num-classes 10``: the matching-aware loss, the auxiliary class loss, conditional BatchNorm and the conditional
learning rates). Both start from the same seed; only the conditional model's extra modules differ. Ablations, each
the conditional defaults less one part: ``conditional-no-mismatch``, ``conditional-unconditional-rates``,
``conditional-no-class-loss``, ``conditional-no-class-norm``; screened on one seed: ``conditional-mismatch-W``
and ``conditional-lr-generator-8e-3``. ``conditional-before`` is the conditional default before the matching-aware
loss and the conditional rates (``BEFORE``), and the earlier study's ablations keep their names with it
(``conditional-class-norm-only``, ...; ``conditional-20-epochs``: 4x the steps). Runs already finished under
``--work-dir`` are reused unless ``--retrain`` is given.

Besides the evaluator's metrics, each conditional run records ``class_accuracy_confident``: the class accuracy
among the samples the classifier recognises with confidence (top probability > 0.9, the ``confident_share``), which
separates samples of the wrong class from samples that are no clear character at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_train import cpu_line  # noqa: E402
from study_runs import Log, elapsed_log, is_finished, study_parser, train, write_results  # noqa: E402

from gan.artifacts import CONFIG_FILE, versions  # noqa: E402
from gan.data import CLASS_CHARACTERS  # noqa: E402
from gan.metrics import CONFIDENCE_THRESHOLD, Evaluator  # noqa: E402
from gan.samplers import open_generator  # noqa: E402

EPOCHS, BATCH_SIZE = 5, 128  # the chapter's budget
TARGET_CLASS_ACCURACY = 0.95
CONDITIONAL = ["--num-classes", "10"]
# The conditional defaults before the matching-aware loss and the conditional learning rates: the earlier
# ablations below keep their meaning with these flags.
BEFORE = ["--mismatch-loss-weight", "0", "--lr-generator", "2e-3", "--lr-discriminator", "4e-4"]
VARIANTS: dict[str, list[str]] = {  # variant -> train_ddp.py flags beyond the study's common ones
    "unconditional": [],
    # the defaults: matching-aware loss 1, class loss 0.1, conditional BatchNorm, learning rates 4e-3 / 1.6e-3
    "conditional": CONDITIONAL,
    "conditional-no-mismatch": [*CONDITIONAL, "--mismatch-loss-weight", "0"],
    "conditional-unconditional-rates": [*CONDITIONAL, "--lr-generator", "2e-3", "--lr-discriminator", "4e-4"],
    "conditional-no-class-loss": [*CONDITIONAL, "--class-loss-weight", "0"],
    "conditional-no-class-norm": [*CONDITIONAL, "--no-class-norm"],
    # matching-aware loss weights and rates, screened with seed 0 (docs/conditional.md)
    **{f"conditional-mismatch-{w}": [*CONDITIONAL, "--mismatch-loss-weight", w] for w in ("0.5", "2")},
    "conditional-lr-generator-8e-3": [*CONDITIONAL, "--lr-generator", "8e-3"],
    # before: the conditional default of the earlier study, and its ablations
    "conditional-before": [*CONDITIONAL, *BEFORE],
    "conditional-class-norm-only": [*CONDITIONAL, *BEFORE, "--class-loss-weight", "0"],
    "conditional-class-loss-only": [*CONDITIONAL, *BEFORE, "--no-class-norm"],
    "conditional-projection-only": [*CONDITIONAL, *BEFORE, "--no-class-norm", "--class-loss-weight", "0"],
    **{f"conditional-class-loss-{w}": [*CONDITIONAL, *BEFORE, "--class-loss-weight", w] for w in ("0.25", "0.5")},
    **{f"conditional-class-loss-only-{w}": [*CONDITIONAL, *BEFORE, "--no-class-norm", "--class-loss-weight", w]
       for w in ("0.5", "1", "2")},
    "conditional-20-epochs": [*CONDITIONAL, *BEFORE, "--epochs", "20"],  # the last --epochs wins
}
DEFAULT_VARIANTS = ["unconditional", "conditional"]
TRAINING_CODE = ("train_ddp.py", *(f"gan/{name}.py" for name in (
    "config", "data", "noise", "models", "step", "trainer", "ema", "checkpointing", "cpu_kernels", "sync_batchnorm",
    "devices",
)))  # fmt: skip
COLUMNS = (  # (metric, header, format): the summary table's columns after FID
    ("class_accuracy", "class accuracy", "{:.3f}"),
    ("class_accuracy_confident", "class accuracy of confident samples", "{:.3f}"),
    ("confident_share", "confident share", "{:.3f}"),
    ("class_fid_mean", "per-class FID mean", "{:.2f}"),
    ("class_fid_worst", "per-class FID worst", "{:.2f}"),
    ("class_coverage", "class coverage", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("class_precision_mean", "per-class precision", "{:.3f}"),
    ("class_recall_mean", "per-class recall", "{:.3f}"),
)


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------


def train_command(variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, str(ROOT / "train_ddp.py"), "--data-dir", args.data_dir, "--split", "test", "--no-download",
        "--output-dir", str(args.work_dir), "--run-name", f"{variant}-s{seed}", "--report-to", "none",
        "--eval-every", "0", "--seed", str(seed), "--epochs", str(EPOCHS), "--batch-size", str(BATCH_SIZE),
        *VARIANTS[variant],
    ]  # fmt: skip


def code_digest() -> str:
    """SHA-256 (12 hex digits) of the code that decides the trained weights: runs trained with different code are
    not comparable, and the working tree may change between the runs of a long study."""
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def digest_path(run_dir: Path) -> Path:
    """RUN_DIR.code beside the run folder (not with_suffix: a variant's name may hold a dot, as in 0.5)."""
    return run_dir.parent / f"{run_dir.name}.code"


def ensure_trained(variant: str, seed: int, args: argparse.Namespace, log: Log) -> float | None:
    """Train (variant, seed) unless its run folder is complete; the training seconds (None: reused). The code's
    digest at the start of training goes to RUN_DIR.code beside the run folder."""
    run_dir = args.work_dir / f"{variant}-s{seed}"
    if is_finished(run_dir) and not args.retrain:
        log(f"reusing {run_dir}")
        return None
    shutil.rmtree(run_dir, ignore_errors=True)
    digest_path(run_dir).write_text(code_digest() + "\n")
    return train(train_command(variant, seed, args), args.work_dir / f"{variant}-s{seed}.log",
                 f"{variant} seed {seed}", log)


# ------------------------------------------------------------------------------------------------------------
# Evaluation: what `python -m gan.evaluate RUN_DIR --n N --seed EVAL_SEED` computes
# ------------------------------------------------------------------------------------------------------------


def evaluate_run(evaluator: Evaluator, run_dir: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    generator = open_generator(run_dir)
    images, labels = generator.generate(args.n, args.eval_seed)
    report = evaluator.report(images, labels)
    metrics = dict(report.metrics)
    if labels is not None:  # a second classifier pass (about a second) for a diagnostic the evaluator does not report
        probabilities = evaluator.classify(images).probabilities.cpu()
        confident = probabilities.max(1).values > CONFIDENCE_THRESHOLD
        hits = probabilities.argmax(1)[confident] == labels[confident]
        metrics["class_accuracy_confident"] = hits.double().mean().item() if len(hits) else float("nan")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    digest_file = digest_path(run_dir)
    return {
        "run_dir": str(run_dir),
        "code_digest": digest_file.read_text().strip() if digest_file.is_file() else None,
        "num_classes": generator.num_classes,
        "mixed_precision": config.get("mixed_precision"),
        "metrics": metrics,
        "classes": [{"label": c.label, "character": c.character, "accuracy": c.accuracy, "fid": c.fid,
                     "precision": c.precision, "recall": c.recall} for c in report.classes],
        "eval_seconds": time.perf_counter() - start,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def _cell(runs: list[dict], name: str, fmt: str) -> str:
    values = [run["metrics"][name] for run in runs if name in run["metrics"]]
    if not values:
        return "–"
    mean = fmt.format(statistics.fmean(values))
    return f"{mean} ± {fmt.format(statistics.stdev(values))}" if len(values) > 1 else mean


def report(results: dict[tuple[str, int], dict], variants: list[str], seeds: list[int], floor: dict) -> str:
    runs = {variant: [results[(variant, seed)] for seed in seeds] for variant in variants}
    sd_note = "mean ± sample sd over seeds" if len(seeds) > 1 else "one seed: no sd"
    lines = [
        f"Seeds {', '.join(map(str, seeds))} ({sd_note}); each generator's 10,000-sample evaluation against the 10,000 "
        f"real test images (per class: its 1,000). Real-vs-real floor (5,000 vs 5,000, ~500 per class): FID "
        f"{floor['fid']:.2f}, class accuracy {floor['class_accuracy']:.3f}, per-class FID mean "
        f"{floor['class_fid_mean']:.2f} / worst {floor['class_fid_worst']:.2f}, coverage "
        f"{floor['class_coverage']:.3f}, precision {floor['precision']:.3f}, recall {floor['recall']:.3f}.",
        "",
        "| variant | FID | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for variant in variants:
        cells = [_cell(runs[variant], name, fmt) for name, _, fmt in COLUMNS]
        lines.append(f"| {variant} | {_cell(runs[variant], 'fid', '{:.2f}')} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "Per seed: FID (class accuracy; worst class by FID):",
        "",
        "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for variant in variants:
        cells = []
        for run in runs[variant]:
            m = run["metrics"]
            extra = (
                f" ({m['class_accuracy']:.3f}; {CLASS_CHARACTERS[int(m['class_fid_worst_class'])]} "
                f"{m['class_fid_worst']:.2f})"
                if "class_accuracy" in m
                else ""
            )
            cells.append(f"{m['fid']:.2f}{extra}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")

    for variant in variants:
        if not runs[variant][0]["classes"]:
            continue
        lines += [
            "",
            f"{variant}, per class (mean over seeds):",
            "",
            "| class | accuracy | FID | precision | recall |",
            "|---|---:|---:|---:|---:|",
        ]
        for index, row in enumerate(runs[variant][0]["classes"]):
            rows = [run["classes"][index] for run in runs[variant]]
            mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731,B023
            lines.append(
                f"| {row['label']} {row['character']} | {mean('accuracy'):.3f} | {mean('fid'):.2f} | "
                f"{mean('precision'):.3f} | {mean('recall'):.3f} |"
            )

    if {"unconditional", "conditional"} <= set(variants):
        accuracy = statistics.fmean(run["metrics"]["class_accuracy"] for run in runs["conditional"])
        fids = {variant: statistics.fmean(run["metrics"]["fid"] for run in runs[variant]) for variant in runs}
        paired = [
            c["metrics"]["fid"] - u["metrics"]["fid"]
            for c, u in zip(runs["conditional"], runs["unconditional"], strict=True)
        ]
        met = accuracy >= TARGET_CLASS_ACCURACY and fids["conditional"] <= fids["unconditional"]
        lines += ["", f"FID conditional minus unconditional, paired by seed: {_mean_sd(paired)} "
                  f"({', '.join(f'{d:+.2f}' for d in paired)}).",
                  f"target (conditional class accuracy >= {TARGET_CLASS_ACCURACY} and mean FID no worse than the "
                  f"unconditional default's): {'MET' if met else 'NOT MET'} — class accuracy {accuracy:.3f}, FID "
                  f"{fids['conditional']:.2f} vs {fids['unconditional']:.2f}."]  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = study_parser(__doc__, list(VARIANTS), DEFAULT_VARIANTS, "/tmp/conditional_study",
                          "per run, per class, timings")
    args = parser.parse_args()
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = elapsed_log()
    variants = list(dict.fromkeys(args.variants))

    evaluator = Evaluator(args.data_dir, "test", "cpu", seed=args.eval_seed)
    floor = evaluator.real_floor(per_class_metrics=True)
    results: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:  # seed-major: a partial study holds every variant of the first seeds
        for variant in variants:
            seconds = ensure_trained(variant, seed, args, log)
            result = evaluate_run(evaluator, args.work_dir / f"{variant}-s{seed}", args)
            results[(variant, seed)] = {**result, "variant": variant, "seed": seed, "train_seconds": seconds}
            m = result["metrics"]
            accuracy = f", class accuracy {m['class_accuracy']:.3f}" if "class_accuracy" in m else ""
            log(f"{variant} seed {seed}: FID {m['fid']:.2f}{accuracy}, coverage {m['class_coverage']:.3f} "
                f"(evaluated in {result['eval_seconds']:.0f} s)")  # fmt: skip

    total = time.perf_counter() - started
    cpu = cpu_line()
    precisions = sorted({str(r["mixed_precision"]) for r in results.values()})
    print(f"$ python {shlex.join(sys.argv)}")
    print(
        f"CPU: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; trained with "
        f"--mixed-precision {'/'.join(precisions)} (the trainer's default here); generators sampled in eval mode\n"
    )
    print(report(results, variants, args.seeds, floor))
    digests = {str(r["code_digest"]) for r in results.values()}
    if len(digests) > 1:
        print(
            f"\nWARNING: the runs were trained with different code (digests {', '.join(sorted(digests))}): retrain "
            f"with --retrain once the code is settled"
        )
    else:
        print(f"\nall runs trained with the same code (digest {digests.pop()}; now {code_digest()})")
    train_seconds = {v: [r["train_seconds"] for (v2, _), r in results.items() if v2 == v and r["train_seconds"]]
                     for v in variants}  # fmt: skip
    timing = ", ".join(f"{v} {statistics.fmean(s):.0f} s/run" for v, s in train_seconds.items() if s)
    print(f"\ntraining: {timing or 'all runs reused'}; total {total / 60:.1f} min")
    if args.out:
        write_results(args.out, {
            "cpu": cpu,
            "seeds": args.seeds,
            "variants": {v: VARIANTS[v] for v in variants},
            "samples": args.n,
            "eval_seed": args.eval_seed,
            "real_floor": floor,
            "runs": list(results.values()),
            "total_seconds": total,
            "versions": versions(),
        })


if __name__ == "__main__":
    main()
