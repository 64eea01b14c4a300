"""Training throughput: this project's loop against a literal port of the chapter's loop, same machine, same run.

    python benchmarks/bench_train.py --data-dir ../shared/data --steps 60

Each variant runs in its own process (accelerate's state is per process), one after another, on the same data
(the 10,000-image test split), batch 128, the same number of timed steps after the same warm-up; start-up (imports,
data loading, model building, compilation) is excluded. Prints images/s and the ratio to the literal port.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "literal": "the chapter's loop: per-item PIL/ToTensor transform, DataLoader(128, shuffle), Sigmoid+BCELoss, fp32",
    "project": "train_ddp.py's loop, default flags (fp32)",
    "project-bf16": "train_ddp.py's loop, --mixed-precision bf16",
    "project-channels-last": "train_ddp.py's loop, fp32, channels-last memory format",
    "project-bf16-channels-last": "train_ddp.py's loop, --mixed-precision bf16, channels-last memory format",
    "project-compile": "train_ddp.py's loop, fp32, torch.compile of both networks",
}


def literal_port(data_dir: str, warmup: int, steps: int) -> float:
    """The chapter's loop as written there (benchmarks/literal_port.py), timed over ``steps`` batches."""
    from literal_port import build_literal

    literal = build_literal(data_dir, seed=0)
    batches = literal.batches()
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        literal.step(next(batches))
    return steps * 128 / (time.perf_counter() - start)


def project_loop(data_dir: str, warmup: int, steps: int, variant: str) -> float:
    """The same components and calls as ``gan.trainer.train``'s loop."""
    from gan.config import TrainConfig
    from gan.data import ShardedBatches
    from gan.trainer import build_gan, load_data, make_accelerator
    from gan.training import step_noise, train_step

    config = TrainConfig(
        data_dir=data_dir,
        split="test",
        no_download=True,
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if variant == "project-bf16" else "no",
    )
    accelerator = make_accelerator(config)
    data = load_data(config, accelerator)
    batches = ShardedBatches(data.images.to(accelerator.device), config.batch_size, config.seed)
    gan = build_gan(config, accelerator, sync_bn=False)
    channels_last = variant.endswith("channels-last")
    if channels_last:
        gan.generator.to(memory_format=torch.channels_last)
        gan.discriminator.to(memory_format=torch.channels_last)
    if variant == "project-compile":
        gan.generator = torch.compile(gan.generator)
        gan.discriminator = torch.compile(gan.discriminator)

    def stream():
        epoch = 0
        while True:
            yield from batches.epoch(epoch)
            epoch += 1

    it = stream()
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        real = next(it)
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        noise = step_noise(config.seed, step, config.batch_size, config.latent_dim, 0, 1).to(
            accelerator.device
        )
        metrics = train_step(accelerator, gan, real, noise)
    metrics.cpu()  # wait for the device
    return steps * 128 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per variant, interleaved; the best counts"
    )
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: run one variant
    args = parser.parse_args()

    if args.one:
        run = literal_port if args.one == "literal" else None
        speed = (
            run(args.data_dir, args.warmup, args.steps)
            if run
            else project_loop(args.data_dir, args.warmup, args.steps, args.one)
        )
        print(json.dumps({"variant": args.one, "images_per_second": speed}))
        return

    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for variant in args.variants:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    variant,
                    "--data-dir",
                    args.data_dir,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            speed = json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]
            best[variant] = max(best.get(variant, 0.0), speed)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {device}; torch {torch.__version__}; {args.steps} timed steps of batch 128 after "
        f"{args.warmup} warm-up; best of {args.repeats}"
    )
    print("| variant | images/s | vs literal port | what |\n|---|---:|---:|---|")
    reference = best.get("literal")
    for variant in args.variants:
        ratio = f"{best[variant] / reference:.2f}x" if reference else "-"
        print(f"| {variant} | {best[variant]:.0f} | {ratio} | {VARIANTS[variant]} |")


if __name__ == "__main__":
    main()
