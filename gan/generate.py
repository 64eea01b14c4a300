"""``python -m gan.generate MODEL.onnx --n 64 --seed 0 --out grid.png [--npy F] [--label つ]``: images without torch.

A class-conditional model makes the class that ``--label`` names, or without it goes through its classes in turn
(:func:`gan.noise.sample_labels`), drawn one column per class. The images are made a batch at a time
(``gan.onnx_generator.GENERATE_BATCH``) and each batch is appended to the .npy file, so memory stays the same at any
--n. Both files appear complete or not at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from gan.atomic_write import atomic_path
from gan.cli import HelpFormatter, at_least_one, exit_with_problems
from gan.noise import seed_problem
from gan.onnx_generator import IMAGE_SHAPE, ModelError, OnnxGenerator
from gan.paths import input_file_problem, output_file_problem
from gan.pictures import tile

# The most images one grid shows: 100 x 100 characters, a 3,002-pixel square. Past that a grid is no picture to
# look at, so a larger --n is for the .npy file, and the grid shows its first GRID_LIMIT images.
GRID_LIMIT = 10_000
NPY_SHAPE = IMAGE_SHAPE[1:]  # one image as the .npy file stores it: uint8 [28, 28]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.generate",
        description="Generate Kuzushiji-MNIST characters with an exported ONNX generator (no torch needed).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="the .onnx file written by export.py")
    parser.add_argument("--n", type=int, default=64, help=f"number of images; more than {GRID_LIMIT} only with --npy")
    parser.add_argument("--seed", type=int, default=0, help="noise seed, 0 to 2**63 - 1 (same seed, same images)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("grid.png"),
        help=f"grid PNG to write: all the images, or the first {GRID_LIMIT} when --n is larger",
    )
    parser.add_argument("--npy", type=Path, default=None, help="also write all uint8 images [n, 28, 28] to this .npy")
    parser.add_argument(
        "--label",
        default=None,
        help="a class-conditional model: make only this class, given as its index (3), character (つ) or romanized "
        "name (tsu). Without it the images go through the classes in turn (お き す つ な は ま や れ を お ...) and "
        "the grid has one column per class. An unconditional model takes no --label",
    )
    parser.add_argument(
        "--columns",
        type=int,
        default=None,
        help="images per grid row, at most the images shown (default: near-square; one column per class for a "
        "conditional model without --label)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads: 0 (one per core) up to the cores"
    )
    return parser


def problems(args: argparse.Namespace) -> list[str]:
    """Every problem with the arguments, as sentences that name the flag; the paths are tried for real."""
    found = at_least_one({"n": args.n}) + [problem for problem in [seed_problem(args.seed)] if problem]
    shown = min(args.n, GRID_LIMIT)
    if args.n > GRID_LIMIT and args.npy is None:
        found.append(
            f"--n {args.n} is more images than a grid shows (at most {GRID_LIMIT}): add --npy FILE.npy to save "
            f"them all (the grid then shows the first {GRID_LIMIT}), or lower --n"
        )
    if args.columns is not None and not 1 <= args.columns <= max(shown, 1):
        found.append(f"--columns must be between 1 and {max(shown, 1)} (the images in the grid), got {args.columns}")
    cores = os.cpu_count() or 1
    if not 0 <= args.threads <= cores:
        found.append(f"--threads must be between 0 (one per core) and {cores} (the cores here), got {args.threads}")
    return found + file_problems(args) + [problem for problem in [label_problem(args)] if problem]


def label_problem(args: argparse.Namespace) -> str | None:
    """Is --label a class of the model? Asked of the model itself: a model that cannot be read is another problem, and
    one that cannot be loaded is left to :func:`main` (exit status 1, like any unusable file)."""
    if args.label is None or input_file_problem(args.model, "MODEL", ".onnx file"):
        return None
    try:
        OnnxGenerator(args.model).check_labels(args.label, 1)
    except ModelError:
        return None
    except ValueError as error:
        return f"--label {args.label}: {error}"
    return None


def file_problems(args: argparse.Namespace) -> list[str]:
    """The model must be a readable file; --out a .png and --npy a .npy that can be written (with room for n images)."""
    found = [input_file_problem(args.model, "MODEL", ".onnx file")]
    if args.out.suffix.lower() != ".png":
        found.append(f"--out must name a .png file, got {str(args.out)!r}")
    else:
        found.append(output_file_problem(args.out, "--out"))
    if args.npy is not None and args.npy.suffix != ".npy":
        found.append(f"--npy must name a .npy file, got {str(args.npy)!r}")
    elif args.npy is not None:
        found.append(output_file_problem(args.npy, "--npy") or npy_space_problem(args.npy, args.n))
    return [problem for problem in found if problem]


def npy_space_problem(path: Path, n: int) -> str | None:
    """Is there room for ``n`` images in ``path``'s folder? Checked first: a full disk would stop the run late."""
    needed, free = max(n, 0) * int(np.prod(NPY_SHAPE)), shutil.disk_usage(path.parent).free
    if needed > free:
        return (
            f"--npy {path}: {n} images need {needed / 1e6:,.0f} MB, but only {free / 1e6:,.0f} MB are free there; "
            f"lower --n or choose another --npy"
        )
    return None


@contextmanager
def npy_file(path: Path, shape: tuple[int, ...]) -> Iterator[BinaryIO]:
    """An open file to append C-order uint8 rows to; it becomes the .npy ``path`` of ``shape`` only if the block
    succeeds having written them all. Plain writes, not ``np.lib.format.open_memmap``: the pages of a memory map
    would count toward the process's memory, which then grows with n after all."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        start = file.tell()
        yield file
        if file.tell() - start != int(np.prod(shape)):
            raise RuntimeError(f"wrote {file.tell() - start} bytes of images to {path}, expected {np.prod(shape)}")


def write_images(
    generator: OnnxGenerator, n: int, seed: int, npy: Path | None, label: str | None = None
) -> np.ndarray:
    """Generate ``n`` images (of class ``label``, for a conditional model) batch by batch, appending each batch to
    ``npy`` (when given); returns the grid's."""
    shown: list[np.ndarray] = []
    kept = 0
    with npy_file(npy, (n, *NPY_SHAPE)) if npy is not None else nullcontext() as file:
        for images in generator.generate_batches(n, seed, labels=label):  # uint8 [<= GENERATE_BATCH, 28, 28]
            if file is not None:
                file.write(images.tobytes())
            if kept < GRID_LIMIT:
                shown.append(images[: GRID_LIMIT - kept])
                kept += len(shown[-1])
    return np.concatenate(shown)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    exit_with_problems(parser, problems(args))
    try:
        generator = OnnxGenerator(args.model, intra_op_threads=args.threads)
        shown = write_images(generator, args.n, args.seed, args.npy, args.label)
    except ModelError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        return write_failed(parser, args.npy, error)
    try:
        with atomic_path(args.out) as tmp:
            Image.fromarray(tile(shown, grid_columns(generator, args, len(shown)), fill=0)).save(tmp, format="PNG")
    except OSError as error:
        return write_failed(parser, args.out, error)
    which = f"{len(shown)} images" if len(shown) == args.n else f"the first {len(shown)} of {args.n} images"
    print(f"wrote {which}{classes_shown(generator, args.label)} ({args.model}, seed {args.seed}) to {args.out}")
    if args.npy is not None:
        print(f"wrote uint8 {[args.n, *NPY_SHAPE]} to {args.npy}")
    return 0


def grid_columns(generator: OnnxGenerator, args: argparse.Namespace, shown: int) -> int | None:
    """--columns; else one column per class for a conditional model's classes in turn; else None (near-square)."""
    if args.columns is None and generator.num_classes and args.label is None:
        return min(generator.num_classes, shown)
    return args.columns


def classes_shown(generator: OnnxGenerator, label: str | None) -> str:
    """' of class 3 つ (tsu)', ' of the 10 classes in turn, a column each', or '' for an unconditional model."""
    if not generator.num_classes:
        return ""
    if label is None:
        return f" of the {generator.num_classes} classes in turn, a column each"
    index = generator.classes.index(label)
    romanized = f" ({generator.classes.romanized[index]})" if generator.classes.romanized else ""
    return f" of class {index} {generator.class_names[index]}{romanized}"


def write_failed(parser: argparse.ArgumentParser, path: Path, error: OSError) -> int:
    """Report a write that failed although its place was checked: a disk can fill up or go away meanwhile."""
    print(f"{parser.prog}: error: cannot write {path} ({error.strerror or error}); nothing was left half-written. "
          f"Free some space or choose another place.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
