"""Image grids, and the chapter's pictures and the metrics table written into the run folder.

numpy only at import (``python -m gan.generate`` tiles images without torch or matplotlib); matplotlib is loaded
when a figure is drawn.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gan.noise import GRID_COLUMNS

REAL_SAMPLES = "real_samples.png"
SAMPLES_OVER_TIME = "samples_over_time.png"
SAMPLES_FINAL = "samples_final.png"
LOSSES = "losses.png"
METRICS_CSV = "metrics.csv"
DIVIDER = 3  # pixels of black between a conditional grid's real images and its samples


@dataclass(frozen=True)
class ClassRows:
    """How a class-conditional generator's grids are labelled: one row per class, led by a real image of it."""

    exemplars: np.ndarray  # uint8 [C, H, W]: a real image of each class, in label order
    names: tuple[str, ...]  # each class's name, romanized (matplotlib's fonts have no kana)
    characters: tuple[str, ...]  # each class's character, for captions that a browser shows (W&B)

    def legend(self) -> str:
        """'rows: 0 お (o), 1 き (ki), ...': which class each row shows, for an image's caption."""
        return "rows: " + ", ".join(f"{label} {character} ({name})" for label, (character, name)
                                     in enumerate(zip(self.characters, self.names, strict=True)))


def tile(images: np.ndarray, columns: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """uint8 [N, H, W] -> one uint8 image with the N images on a grid, ``columns`` per row (default: near-square),
    ``pad`` pixels of ``fill`` between and around them.

    numpy, not torchvision's ``make_grid``: apps that generate with onnxruntime have no torch.
    """
    if images.ndim != 3:
        raise ValueError(f"expected images [N, H, W], got shape {list(images.shape)}")
    count, height, width = images.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad), fill, dtype=np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[top : top + height, left : left + width] = image
    return canvas


def grid_image(images: np.ndarray, rows: ClassRows | None = None, pad: int = 2) -> np.ndarray:
    """A sample grid as one uint8 image: :data:`GRID_COLUMNS` images a row (the chapter's 8x8 for its 64).

    With ``rows`` (a conditional generator's grid, its images class after class) each class's row is led by the
    class's real image and a black divider, so that the row says which character it was asked for.
    """
    grid = tile(images, columns=GRID_COLUMNS, pad=pad)
    if rows is None:
        return grid
    if len(images) != GRID_COLUMNS * len(rows.exemplars):
        raise ValueError(f"a grid of {len(rows.exemplars)} classes needs {GRID_COLUMNS} images a class, "
                         f"got {len(images)} images")
    divider = np.zeros((grid.shape[0], DIVIDER), dtype=np.uint8)
    return np.concatenate([tile(rows.exemplars, columns=1, pad=pad), divider, grid], axis=1)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _show(axis, image: np.ndarray, rows: ClassRows | None = None, pad: int = 2, fontsize: str = "small") -> None:
    """``image`` on ``axis`` without a frame; with ``rows``, each row named on the left ("3 tsu")."""
    axis.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axis.axis("off")
    if rows is not None:
        height = rows.exemplars.shape[1]
        for label, name in enumerate(rows.names):
            axis.text(-pad, pad + label * (height + pad) + height / 2, f"{label} {name}", ha="right", va="center",
                      fontsize=fontsize)


def _save_image(path: Path, image: np.ndarray, title: str, rows: ClassRows | None = None) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 6.4), dpi=100)
    _show(axis, image, rows)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def save_real_samples(path: Path, images: np.ndarray) -> None:
    _save_image(path, tile(images, columns=4), f"Real images: the first {len(images)} of the first batch")


def save_samples_final(path: Path, images: np.ndarray, which: str, rows: ClassRows | None = None) -> None:
    title = (f"A fresh batch from the final generator ({which} weights)" if rows is None
             else f"The final generator ({which} weights), a row per class")
    _save_image(path, grid_image(images, rows), title, rows)


def evenly_spaced(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def save_samples_over_time(path: Path, grids: list[tuple[int, np.ndarray]], panels: int = 16,
                           rows: ClassRows | None = None) -> None:
    """16 fixed-noise grids spread evenly over training, as a 4x4 panel; each grid is its 64 images, 8x8 (or, with
    ``rows``, one row per class, named in the left-hand panels)."""
    plt = _pyplot()
    chosen = evenly_spaced(grids, panels)
    side = int(np.ceil(np.sqrt(max(len(chosen), 1))))
    figure, axes = plt.subplots(side, side, figsize=(3 * side, 3.2 * side), dpi=100, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for index, (axis, (step, grid)) in enumerate(zip(axes.flat, chosen, strict=False)):
        _show(axis, grid_image(grid, rows, pad=1), rows if index % side == 0 else None, pad=1, fontsize="x-small")
        axis.set_title(f"step {step}")
    per_class = ", a row per class" if rows is not None else ""
    figure.suptitle(f"Samples from the fixed noise over training{per_class}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def save_losses(path: Path, history: list[dict[str, float]]) -> None:
    plt = _pyplot()
    steps = [row["step"] for row in history]
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    axis.plot(steps, [row["d_loss"] for row in history], label="discriminator", linewidth=0.8)
    axis.plot(steps, [row["g_loss"] for row in history], label="generator", linewidth=0.8)
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_title("Losses per iteration")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def save_run_pictures(run_dir: Path, real: np.ndarray | None, final: np.ndarray, which: str,
                      grids: list[tuple[int, np.ndarray]], history: list[dict[str, float]],
                      rows: ClassRows | None = None) -> list[Path]:
    """The chapter's pictures and the metrics table of a finished run; returns the pictures written.

    ``real``: the first real images of the first batch; ``final``: a fresh batch from the final generator
    (``which`` weights); ``grids``: (step, fixed-noise images) pairs; all uint8 [N, 28, 28]. ``rows``: a
    conditional generator's, whose ``final`` and grids hold their images class after class.
    """
    written = []
    if real is not None:
        save_real_samples(run_dir / REAL_SAMPLES, real)
        written.append(run_dir / REAL_SAMPLES)
    save_samples_over_time(run_dir / SAMPLES_OVER_TIME, grids, rows=rows)
    save_samples_final(run_dir / SAMPLES_FINAL, final, which, rows)
    save_losses(run_dir / LOSSES, history)
    write_metrics_csv(run_dir / METRICS_CSV, history)
    return [*written, run_dir / SAMPLES_OVER_TIME, run_dir / SAMPLES_FINAL, run_dir / LOSSES]


def read_rgb(path: Path) -> np.ndarray:
    """A PNG written here as uint8 [H, W, 3], for the trackers."""
    import matplotlib.image

    return (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8)
