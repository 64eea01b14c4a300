"""``python -m gan.generate MODEL.onnx --n 64 --seed 0 --out grid.png [--npy F]``: images without torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from gan.cli import at_least_one, exit_with_problems
from gan.onnx_generator import ModelError, OnnxGenerator
from gan.pictures import tile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.generate",
        description="Generate Kuzushiji-MNIST characters with an exported ONNX generator (no torch needed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="the .onnx file written by export.py")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="grid PNG to write")
    parser.add_argument("--npy", type=Path, default=None, help="also write the uint8 images [n, 28, 28] as .npy")
    parser.add_argument("--columns", type=int, default=None, help="images per grid row (default: near-square)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: one per core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    counts = {"n": args.n} if args.columns is None else {"n": args.n, "columns": args.columns}
    exit_with_problems(parser, at_least_one(counts))
    try:
        generator = OnnxGenerator(args.model, intra_op_threads=args.threads)
    except ModelError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    images = generator.generate(args.n, seed=args.seed)  # uint8 [n, 28, 28]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile(images, args.columns, fill=0)).save(args.out)
    print(f"wrote {args.n} images ({args.model}, seed {args.seed}) to {args.out}")
    if args.npy is not None:
        args.npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.npy, images)
        print(f"wrote uint8 {list(images.shape)} to {args.npy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
