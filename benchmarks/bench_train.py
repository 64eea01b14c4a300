"""Training throughput: train_ddp.py against a literal port of the chapter's loop, same machine, same run.

    python benchmarks/bench_train.py --steps 150 --warmup 10 --repeats 6

The literal port (benchmarks/literal_port.py) is timed over ``--steps`` batches after ``--warmup`` untimed ones.
Each project variant is ``train_ddp.py`` itself, run as a subprocess with its flags for ``warmup + steps`` steps on
the same data (the 10,000-image test split), batch 128; its throughput comes from the rates it logs to
``metrics.csv``. The trainer reads the device only at sync points (every ``--log-every`` steps, set here to
``--warmup``), and each step's rate is its window's: the window's images over the time from the end of the last
sync point to the end of this one (drawing batches, both updates, the EMA update, the metrics' all-reduce and the
wait for the device; start-up, evaluations and checkpoints are excluded, as the literal port's start-up is). The
first window is the warm-up, where ``--compile`` compiles. Variants run
one after another, interleaved over ``--repeats``. Prints the CPU (model, PyTorch capability, vector flags) or GPU,
then each variant's best images/s, its ratio to the reference's best, and the range and median of the per-repeat
ratios. The reference is the literal port, or, when it is not among ``--variants``, the first variant (an A/B).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# variant -> train_ddp.py flags (None: the literal port)
VARIANTS: dict[str, list[str] | None] = {
    "literal": None,
    "project": ["--mixed-precision", "no"],  # default flags (on CPU that includes channels-last)
    "project-bf16": ["--mixed-precision", "bf16"],
    "project-no-channels-last": ["--mixed-precision", "no", "--no-channels-last"],
    "project-bf16-no-channels-last": ["--mixed-precision", "bf16", "--no-channels-last"],
    "project-no-cpu-kernels": ["--mixed-precision", "no", "--no-cpu-kernels"],
    "project-bf16-no-cpu-kernels": ["--mixed-precision", "bf16", "--no-cpu-kernels"],
    # GPU only (train_ddp.py refuses fp16 on CPU); on a GPU channels-last is off by default, so it gets its variants
    "project-fp16": ["--mixed-precision", "fp16"],
    "project-channels-last": ["--mixed-precision", "no", "--channels-last"],
    "project-bf16-channels-last": ["--mixed-precision", "bf16", "--channels-last"],
    "project-fp16-channels-last": ["--mixed-precision", "fp16", "--channels-last"],
    "project-compile": ["--mixed-precision", "no", "--compile"],
    "project-bf16-compile": ["--mixed-precision", "bf16", "--compile"],
    "project-fp16-compile": ["--mixed-precision", "fp16", "--compile"],
}
CPU_VARIANTS = ["literal", "project", "project-bf16", "project-no-cpu-kernels", "project-bf16-no-cpu-kernels",
                "project-no-channels-last", "project-bf16-no-channels-last"]
GPU_VARIANTS = ["literal", "project", "project-bf16", "project-fp16", "project-channels-last",
                "project-bf16-channels-last", "project-fp16-channels-last", "project-compile",
                "project-bf16-compile", "project-fp16-compile"]
DESCRIPTIONS = {
    "literal": "the chapter's loop: per-item PIL/ToTensor transform, DataLoader(128, shuffle), Sigmoid+BCELoss, fp32",
}


def literal_port(data_dir: str, warmup: int, steps: int) -> float:
    """The chapter's loop as written there (benchmarks/literal_port.py), timed over ``steps`` batches."""
    from literal_port import build_literal

    cuda = torch.cuda.is_available()
    literal = build_literal(data_dir, seed=0, device="cuda" if cuda else "cpu")  # the chapter's device choice
    batches = literal.batches()
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        losses = literal.step(next(batches))
    losses[0].item()  # wait for the device
    return steps * 128 / (time.perf_counter() - start)


def project_run(data_dir: str, warmup: int, steps: int, flags: list[str]) -> float:
    """train_ddp.py with ``flags`` for ``warmup + steps`` steps; images/s over the last ``steps`` of them."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, str(ROOT / "train_ddp.py"), "--data-dir", data_dir, "--split", "test", "--no-download",
            "--max-steps", str(warmup + steps), "--output-dir", out, "--run-name", "bench", "--report-to", "none",
            "--eval-every", "0", "--log-every", str(warmup), *flags,
        ]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        with open(Path(out) / "bench" / "metrics.csv", newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) > warmup]
    assert len(rows) == steps, f"expected {steps} timed steps in metrics.csv, found {len(rows)}"
    seconds = sum(128 / float(row["images_per_second"]) for row in rows)
    return steps * 128 / seconds


def cpu_line() -> str:
    """The CPU a figure holds for: model, PyTorch's kernel capability, the vector flags that matter here."""
    from gan.devices import cpu_description, cpu_flags

    described = cpu_description()
    flags = sorted((cpu_flags() or set()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    return (f"CPU {described['model']}, {torch.get_num_threads()} threads, capability {described['capability']}, "
            f"flags {' '.join(flags) or 'unknown'}")


def describe(variant: str) -> str:
    flags = VARIANTS[variant]
    return DESCRIPTIONS.get(variant) or "train_ddp.py " + " ".join(flags)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first, at least 1 (compilation happens here)"
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: the CPU or the GPU set, whichever this machine trains on")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per variant, interleaved"
    )
    parser.add_argument("--one-literal", action="store_true", help=argparse.SUPPRESS)  # internal: time the literal port
    args = parser.parse_args()

    if args.one_literal:
        print(json.dumps({"images_per_second": literal_port(args.data_dir, args.warmup, args.steps)}))
        return

    args.variants = args.variants or (GPU_VARIANTS if torch.cuda.is_available() else CPU_VARIANTS)
    speeds: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for _ in range(args.repeats):
        for variant in args.variants:
            flags = VARIANTS[variant]
            if flags is None:  # the literal port in a fresh process too, like train_ddp.py
                command = [sys.executable, __file__, "--one-literal", "--data-dir", args.data_dir,
                           "--steps", str(args.steps), "--warmup", str(args.warmup)]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                speed = json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]
            else:
                speed = project_run(args.data_dir, args.warmup, args.steps, flags)
            speeds[variant].append(speed)
    # the literal port when it ran, else the first variant: paired A/B ratios per repeat
    reference_name = "literal" if "literal" in speeds else args.variants[0]
    reference = speeds[reference_name]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_line()
    print(f"device: {device}; torch {torch.__version__}; {args.steps} timed steps of batch 128 after "
          f"{args.warmup} warm-up; best of {args.repeats} interleaved repeats, and the range of the per-repeat "
          f"ratios (each repeat's run against the same repeat's {reference_name})")
    print(f"| variant | images/s | vs {reference_name} | per-repeat range | what |\n|---|---:|---:|---:|---|")
    for variant in args.variants:
        best = max(speeds[variant])
        ratios = [mine / theirs for mine, theirs in zip(speeds[variant], reference, strict=True)]
        ratio, spread = f"{best / max(reference):.2f}x", f"{min(ratios):.2f}-{max(ratios):.2f}x"
        median = statistics.median(ratios)
        print(f"| {variant} | {best:.0f} | {ratio} | {spread} (median {median:.2f}x) | {describe(variant)} |")

if __name__ == "__main__":
    main()
