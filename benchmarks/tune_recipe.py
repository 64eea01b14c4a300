"""Tuning the recipe, measured: sample quality of the chapter's loop against this project's, over several seeds.

    python benchmarks/tune_recipe.py --seeds 0 1 2 [--variants ...] [--out results.json]

    # the study as measured (see the README, "Tuning the recipe, measured"):
    python benchmarks/tune_recipe.py --seeds 0 1 2 --mixed-precision bf16 --work-dir /tmp/tune_recipe_v2 \
        --out results.json
    # controls: the literal loop with inputs in [-1, 1], EMA off, label smoothing, bf16 against fp32
    python benchmarks/tune_recipe.py --seeds 0 1 2 --variants literal literal-signed defaults no-ema \
        label-smoothing defaults-fp32 --mixed-precision bf16 --work-dir /tmp/tune_recipe_v2

At the chapter's budget (5 epochs, batch 128) on the 10,000 images of the KMNIST test split, each variant is
trained once per seed, then its final generator is evaluated on 10,000 samples against all 10,000 real test
images with gan.metrics' KMNIST-classifier metrics (FID, KID, coverage, ...). Prints a markdown table of the
means (FID also with its standard deviation over seeds and its ratio to the literal port's), the per-seed FIDs,
the FID differences to ``defaults`` paired by seed, and whether the issue's target is met.

Variants (``VARIANTS`` below has each one's flags):

- ``literal``: the chapter's loop, ported literally (per-item PIL transform x/256 into [0, 1), DataLoader(128,
  shuffle=True, drop_last=False), Sigmoid + BCELoss, Adam 2e-4 / (0.5, 0.999), eager fp32), trained in a
  subprocess of this script. Its generator learned to imitate reals in [0, 1), so its tanh outputs live in about
  [0, 1): for the evaluator's [-1, 1] convention its samples are mapped with clamp(x * 2 - 1, -1, 1), the fair
  comparison.
- ``defaults``: ``train_ddp.py`` with the project's defaults; ``generator.safetensors`` holds the EMA weights.
- ``trained-weights``: no training of its own: ``generator_trained.safetensors`` (the raw weights) of the
  ``defaults`` runs, to see what EMA alone does to the same run.
- ``chapter-adam``: the project with the chapter's optimizer (the project's defaults before this study).
- ``chapter-lr``, ``equal-lr``, ``chapter-betas``, ``beta1-0.5``: the defaults with one part of the optimizer
  set back, to see what each part is worth.
- ``no-ema``, ``label-smoothing``: the defaults with ``--ema-decay 0`` / ``--real-label 0.9``. Not run unless named.
- ``defaults-fp32``: the defaults trained with ``--mixed-precision no``, to check that ``--mixed-precision bf16``
  (used for the project variants when ``--mixed-precision bf16`` is given) does not change quality. Not run unless
  named.
- ``literal-signed``: the literal port with inputs scaled to [-1, 1] (x / 127.5 - 1) and evaluated as it is,
  to isolate the input range. Not run unless named.

Every variant samples the same 10,000 latent vectors (``--eval-seed``), and a project run of seed s starts from
the same weights, data order and noise whatever its flags, so differences between variants at one seed are
paired. The generators are evaluated in eval mode (BatchNorm running statistics), as ``python -m gan.evaluate``
does. Runs already finished under ``--work-dir`` are reused unless ``--retrain`` is given.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # literal_port.py, study_runs.py

from study_runs import elapsed_log, is_finished, study_parser, train, write_results  # noqa: E402

from gan.artifacts import (  # noqa: E402
    CONFIG_FILE,
    GENERATOR_FILE,
    TRAINED_GENERATOR_FILE,
    load_generator,
    save_generator,
    versions,
)

EPOCHS, BATCH_SIZE = 5, 128  # the chapter's budget

# variant -> (how it is made, train_ddp.py flags or None, description)
VARIANTS: dict[str, tuple[str, list[str] | None, str]] = {
    "literal": ("literal", None, "the chapter's loop: x/256 inputs, Sigmoid+BCELoss, fp32; samples mapped x*2-1"),
    "chapter-adam": ("project", ["--lr", "2e-4", "--beta1", "0.5", "--beta2", "0.999"],
                     "the project with the chapter's Adam (lr 2e-4 both, betas 0.5/0.999): the earlier defaults"),
    "defaults": ("project", [], "train_ddp.py defaults (lr G 2e-3 / D 4e-4, betas 0/0.9, EMA 0.999, inputs [-1, 1])"),
    "trained-weights": ("reuse", None, "the defaults runs' raw (non-EMA) weights, generator_trained.safetensors"),
    "chapter-lr": ("project", ["--lr", "2e-4"], "defaults with the chapter's lr 2e-4 for both networks"),
    "equal-lr": ("project", ["--lr", "4e-4"], "defaults with one lr, 4e-4 (D's), for both networks"),
    "chapter-betas": ("project", ["--beta1", "0.5", "--beta2", "0.999"], "defaults with the chapter's betas"),
    "beta1-0.5": ("project", ["--beta1", "0.5"], "defaults with the chapter's beta1 0.5 (momentum back)"),
    "no-ema": ("project", ["--ema-decay", "0"], "defaults with --ema-decay 0"),
    "label-smoothing": ("project", ["--real-label", "0.9"], "defaults with --real-label 0.9"),
    "defaults-fp32": ("project", ["--mixed-precision", "no"], "defaults, always fp32 (the bf16 check)"),
    "literal-signed": ("literal", None, "the literal port with inputs x/127.5-1, evaluated as it is"),
}
DEFAULT_VARIANTS = ["literal", "chapter-adam", "defaults", "trained-weights", "chapter-lr", "equal-lr", "chapter-betas",
                    "beta1-0.5"]
COLUMNS = (  # (metric, header, format)
    ("kid", "KID", "{:.4f}"),
    ("class_coverage", "class coverage", "{:.3f}"),
    ("classifier_score", "classifier score", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("confident_share", "confident share", "{:.3f}"),
)


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------


def train_literal(data_dir: str, seed: int, signed_inputs: bool = False, log_every: int = 50) -> torch.nn.Module:
    """The chapter's training loop, literally (on the 10,000-image test split); returns the trained generator.

    Per-item PIL image -> tensor -> x/256 (values in [0, 1)), DataLoader(batch_size=128, shuffle=True) with the
    default drop_last=False (79 batches per epoch, the last of 16 images), the discriminator ending in a Sigmoid
    and trained with nn.BCELoss (D on real, backward; D on detached fake, backward; step; then G with labels 1),
    Adam(2e-4, betas=(0.5, 0.999)) for both, eager fp32, 5 epochs. ``signed_inputs`` scales x/127.5 - 1 instead.
    """
    from literal_port import build_literal

    literal = build_literal(data_dir, seed, signed_inputs, BATCH_SIZE)
    step, start = 0, time.perf_counter()
    for epoch in range(EPOCHS):
        for real, _ in literal.loader:
            loss_d, loss_g = literal.step(real)
            step += 1
            if step % log_every == 0:
                print(
                    f"literal seed {seed} step {step}/{EPOCHS * len(literal.loader)} epoch {epoch} "
                    f"d_loss {loss_d.item():.4f} g_loss {loss_g.item():.4f} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    generator = literal.generator
    return generator.eval()


def run_literal(work_dir: Path, data_dir: str, seed: int, variant: str) -> None:
    """Train the literal port and save it like a project run (generator.safetensors + config.json)."""
    run_dir = work_dir / f"{variant}-s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    generator = train_literal(data_dir, seed, signed_inputs=variant == "literal-signed")
    save_generator(generator, run_dir / GENERATOR_FILE, {"weights": "trained", "variant": variant})
    config = {
        "variant": variant,
        "seed": seed,
        "latent_dim": generator.latent_dim,
        "base_width": generator.main[0].weight.shape[1] // 4,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "inputs": "x/127.5-1" if variant == "literal-signed" else "x/256 (in [0, 1))",
        "note": "generator.safetensors is the raw trained generator of the literal port"
        + ("" if variant == "literal-signed" else "; its samples live in [0, 1): map them with x*2-1 to evaluate"),
    }
    (run_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def train_command(variant: str, seed: int, work_dir: Path, data_dir: str, mixed_precision: str) -> list[str]:
    kind, flags, _ = VARIANTS[variant]
    if kind == "literal":
        return [sys.executable, __file__, "--one-literal", variant, "--seeds", str(seed),
                "--work-dir", str(work_dir), "--data-dir", data_dir]
    precision = [] if "--mixed-precision" in flags else ["--mixed-precision", mixed_precision]
    return [sys.executable, str(ROOT / "train_ddp.py"), "--data-dir", data_dir, "--split", "test", "--no-download",
            "--output-dir", str(work_dir), "--run-name", f"{variant}-s{seed}", "--report-to", "none",
            "--seed", str(seed), "--eval-every", "0", "--epochs", str(EPOCHS), "--batch-size", str(BATCH_SIZE),
            *precision, *flags]


def run_dir_of(variant: str, seed: int, work_dir: Path) -> tuple[Path, str]:
    """(run folder, weights file) that hold the variant's final generator."""
    if VARIANTS[variant][0] == "reuse":
        return work_dir / f"defaults-s{seed}", TRAINED_GENERATOR_FILE
    return work_dir / f"{variant}-s{seed}", GENERATOR_FILE


def ensure_trained(variant: str, seed: int, args: argparse.Namespace, log) -> float | None:
    """Train (variant, seed) unless its run folder is complete; return the training seconds (None: reused)."""
    if VARIANTS[variant][0] == "reuse":
        variant = "defaults"
    run_dir, _ = run_dir_of(variant, seed, args.work_dir)
    if is_finished(run_dir) and not args.retrain:
        if VARIANTS[variant][0] == "project":
            saved = json.loads((run_dir / CONFIG_FILE).read_text())
            if saved.get("mixed_precision") not in (None, _precision_of(variant, args)):
                raise SystemExit(f"{run_dir} was trained with --mixed-precision {saved.get('mixed_precision')}, "
                                 f"not {_precision_of(variant, args)}: pass --retrain or another --work-dir")
        log(f"reusing {run_dir}")
        return None
    shutil.rmtree(run_dir, ignore_errors=True)
    command = train_command(variant, seed, args.work_dir, args.data_dir, args.mixed_precision)
    return train(command, args.work_dir / f"{variant}-s{seed}.log", f"{variant} seed {seed}", log)


def _precision_of(variant: str, args: argparse.Namespace) -> str:
    flags = VARIANTS[variant][1] or []
    return flags[flags.index("--mixed-precision") + 1] if "--mixed-precision" in flags else args.mixed_precision


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------


def load_weights(run_dir: Path, weights_file: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    generator, _ = load_generator(run_dir, "cpu")  # eval mode; generator.safetensors
    if weights_file != GENERATOR_FILE:
        generator.load_state_dict(load_file(str(run_dir / weights_file)))
    return generator.eval()


def broken_reasons(images: torch.Tensor, metrics: dict[str, float]) -> list[str]:
    """Why a final generator looks broken (empty when it does not).

    Non-finite output; mode collapse (samples nearly identical); few classes; or samples that are not characters
    at all: almost none lies on the real images' feature manifold (precision) or is classified with confidence
    (real images: about 0.87 and 0.96).
    """
    reasons = []
    if not torch.isfinite(images).all():
        reasons.append("non-finite samples")
    spread = images.std(0).mean().item()  # per-pixel standard deviation across samples
    if spread < 0.05:
        reasons.append(f"mode collapse (per-pixel sd across samples {spread:.3f})")
    if metrics["class_coverage"] < 0.5:
        reasons.append(f"class coverage {metrics['class_coverage']:.2f} < 0.5")
    if metrics["precision"] < 0.05 and metrics["confident_share"] < 0.05:
        reasons.append(
            f"not characters: precision {metrics['precision']:.3f}, confident share "
            f"{metrics['confident_share']:.3f} (almost no sample on the real feature manifold or recognised)"
        )
    return reasons


def evaluate_run(evaluator, variant: str, seed: int, args: argparse.Namespace) -> dict:
    from gan.samplers import generate, torch_sampler

    run_dir, weights_file = run_dir_of(variant, seed, args.work_dir)
    start = time.perf_counter()
    generator = load_weights(run_dir, weights_file)
    images = generate(torch_sampler(generator), generator.latent_dim, args.n, args.eval_seed)
    raw_range = (images.min().item(), images.max().item())
    if variant == "literal":  # trained against reals in [0, 1): map onto the evaluator's [-1, 1]
        images = (images * 2 - 1).clamp(-1, 1)
    metrics = evaluator.evaluate(images)
    return {
        "variant": variant,
        "seed": seed,
        "weights": str(run_dir / weights_file),
        "raw_output_range": raw_range,
        "mean_pixel": images.mean().item(),
        "metrics": metrics,
        "broken": broken_reasons(images, metrics),
        "eval_seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def report(results: list[dict], variants: list[str], seeds: list[int], floor: dict[str, float]) -> str:
    by = {(r["variant"], r["seed"]): r for r in results}
    metric = lambda v, name: [by[(v, s)]["metrics"][name] for s in seeds]  # noqa: E731
    literal_fid = statistics.fmean(metric("literal", "fid")) if "literal" in variants else None
    sd_note = "sample sd over seeds" if len(seeds) > 1 else "one seed: no sd"
    lines = [
        f"Means over seeds {', '.join(map(str, seeds))} ({sd_note}); 10,000 samples per generator vs the "
        f"10,000 real test images; real-vs-real floor (5,000 vs 5,000): FID {floor['fid']:.2f}, KID "
        f"{floor['kid']:.4f}, coverage {floor['class_coverage']:.3f}, precision {floor['precision']:.3f}, "
        f"recall {floor['recall']:.3f}.",
        "",
        "| variant | FID mean ± sd | FID / literal | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for v in variants:
        mean, sd = _mean_sd(metric(v, "fid"))
        ratio = f"{mean / literal_fid:.2f}" if literal_fid else "-"
        cells = [fmt.format(statistics.fmean(metric(v, name))) for name, _, fmt in COLUMNS]
        spread = f"{sd:.2f}" if len(seeds) > 1 else "-"
        lines.append(f"| {v} | {mean:.2f} ± {spread} | {ratio} | " + " | ".join(cells) + " |")

    lines += ["", "FID per seed (and class coverage):", "",
              "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for v in variants:
        cells = [f"{by[(v, s)]['metrics']['fid']:.2f} ({by[(v, s)]['metrics']['class_coverage']:.3f})" for s in seeds]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")

    if "defaults" in variants and len(variants) > 1:
        lines += ["", "FID minus the defaults' FID of the same seed (paired; negative: better than the defaults):", "",
                  "| variant | mean ± sd | per seed |", "|---|---:|---|"]
        for v in variants:
            if v == "defaults":
                continue
            diffs = [a - b for a, b in zip(metric(v, "fid"), metric("defaults", "fid"), strict=True)]
            mean, sd = _mean_sd(diffs)
            spread = f"{sd:.2f}" if len(seeds) > 1 else "-"
            lines.append(f"| {v} | {mean:+.2f} ± {spread} | " + ", ".join(f"{d:+.2f}" for d in diffs) + " |")

    if "no-ema" in variants and "trained-weights" in variants:
        same = all(by[("no-ema", s)]["metrics"] == by[("trained-weights", s)]["metrics"] for s in seeds)
        lines += ["", "trained-weights " + ("equals no-ema exactly at every seed: the EMA never feeds back into "
                  "training and these runs are deterministic, so the defaults' raw weights are the no-ema run's"
                  if same else "differs from no-ema: the runs are not deterministic on this machine")]
    broken = [r for r in results if r["broken"]]
    lines.append("")
    lines += [f"BROKEN? {r['variant']} seed {r['seed']}: {'; '.join(r['broken'])}" for r in broken] or [
        "No final generator looks broken (finite, not collapsed, coverage >= 0.5, precision or confident "
        "share >= 0.05)."]

    if "literal" in variants:
        lit = [r for r in results if r["variant"] == "literal"]
        low = min(r["raw_output_range"][0] for r in lit)
        high = max(r["raw_output_range"][1] for r in lit)
        lines.append(f"literal: raw generator outputs span [{low:.3f}, {high:.3f}] (trained against reals in "
                     f"[0, 1)); evaluated as clamp(x*2-1, -1, 1), the evaluator's [-1, 1] convention.")
    if "literal" in variants and "defaults" in variants:
        fid = statistics.fmean(metric("defaults", "fid"))
        coverage = statistics.fmean(metric("defaults", "class_coverage"))
        met = fid <= 0.5 * literal_fid and coverage >= 0.98
        per_seed = [by[("defaults", s)]["metrics"] for s in seeds]
        meeting = sum(m["fid"] <= 0.5 * literal_fid and m["class_coverage"] >= 0.98 for m in per_seed)
        lines.append(
            f"target (defaults' mean FID <= half the literal port's, mean class coverage >= 0.98): "
            f"{'MET' if met else 'NOT MET'} — defaults FID {fid:.2f} vs literal {literal_fid:.2f} "
            f"(ratio {fid / literal_fid:.2f}), coverage {coverage:.3f}; "
            f"seeds that meet it on their own: {meeting} of {len(seeds)}."
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = study_parser(__doc__, list(VARIANTS), DEFAULT_VARIANTS, "/tmp/tune_recipe", "per run, means, timings")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16"),
                        help="precision of the project variants' training (the literal port is always fp32)")
    parser.add_argument("--one-literal", choices=("literal", "literal-signed"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work_dir = args.work_dir.resolve()

    if args.one_literal:  # internal: train one literal-port run in this (sub)process
        run_literal(args.work_dir, args.data_dir, args.seeds[0], args.one_literal)
        return

    started = time.perf_counter()
    log = elapsed_log()
    variants = list(dict.fromkeys(args.variants))
    if "trained-weights" in variants and "defaults" not in variants:
        log("trained-weights reuses the defaults runs: training those too")
    args.work_dir.mkdir(parents=True, exist_ok=True)

    from gan.metrics import Evaluator

    evaluator = Evaluator(args.data_dir, "test", "cpu", seed=args.eval_seed)
    floor = evaluator.real_floor()
    train_seconds: dict[str, list[float]] = {}
    results = []
    # Seed-major order: a partial study still holds every variant of the first seeds.
    for seed in args.seeds:
        for variant in variants:
            seconds = ensure_trained(variant, seed, args, log)
            if seconds is not None:
                train_seconds.setdefault(variant if VARIANTS[variant][0] != "reuse" else "defaults", []).append(seconds)
            result = evaluate_run(evaluator, variant, seed, args)
            result["train_seconds"] = seconds
            results.append(result)
            m = result["metrics"]
            log(f"{variant} seed {seed}: FID {m['fid']:.2f}, coverage {m['class_coverage']:.3f}, precision "
                f"{m['precision']:.3f}, recall {m['recall']:.3f} (evaluated in {result['eval_seconds']:.0f} s)"
                + (f"  BROKEN? {'; '.join(result['broken'])}" if result["broken"] else ""))

    total = time.perf_counter() - started
    device = f"CPU, {torch.get_num_threads()} threads"
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"device: {device}; torch {torch.__version__}; project variants trained with --mixed-precision "
          f"{args.mixed_precision}; the literal port in fp32; generators sampled in eval mode\n")
    print(report(results, variants, args.seeds, floor))
    timing = ", ".join(f"{v} {statistics.fmean(s):.0f} s/run" for v, s in train_seconds.items())
    print(f"\ntraining: {timing or 'all runs reused'}; total {total / 60:.1f} min")
    if args.out:
        write_results(args.out, {
            "seeds": args.seeds,
            "variants": {v: VARIANTS[v][2] for v in variants},
            "mixed_precision": args.mixed_precision,
            "samples": args.n,
            "eval_seed": args.eval_seed,
            "device": device,
            "real_floor": floor,
            "runs": results,
            "train_seconds": train_seconds,
            "total_seconds": total,
            "versions": versions(),
        })


if __name__ == "__main__":
    main()
