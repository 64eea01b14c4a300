"""Kuzushiji-MNIST: download, verify, load once into one uint8 tensor, shard batches across processes.

The files follow torchvision's layout, ``<data-dir>/KMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``,
and are checked against the official MD5 sums (the ones torchvision's ``KMNIST`` class carries). Unlike that class,
a split loads as soon as its own two files are present.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import KMNIST
from torchvision.datasets.utils import calculate_md5, download_url

SPLITS = ("train", "test", "all")
SPLIT_SIZES = {"train": 60_000, "test": 10_000, "all": 70_000}
IMAGE_SIZE = 28
NUM_CLASSES = 10
CLASS_NAMES = tuple(KMNIST.classes)  # romanized: o, ki, su, ...
CLASS_CHARACTERS = ("お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を")  # KMNIST's class map, label order
MD5 = dict(KMNIST.resources)  # file name -> official MD5
MIRRORS = tuple(KMNIST.mirrors)
_PREFIX = {"train": "train", "test": "t10k"}
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # IDX: 0x00 0x00 type(0x08 = uint8) ndim


class DataError(RuntimeError):
    """A data file is missing, corrupt or of the wrong kind; the message says which and what to do."""


class MissingDataError(DataError):
    """A file of ``split`` is absent and downloads are off.

    The message advises the trainer's flags; a command with other flags words its own with :meth:`advise`.
    """

    def __init__(self, path: Path, split: str):
        self.path, self.split = path, split
        super().__init__(
            self.advise(
                "downloads are off (--no-download)",
                "point --data-dir at the folder that holds KMNIST/raw/, drop --no-download to fetch them, or choose "
                "a split whose files you have (e.g. --split test)",
            )
        )

    def advise(self, why: str, remedies: str) -> str:
        """'PATH is missing and WHY. The split needs ... in FOLDER. Put the files there, REMEDIES.'"""
        return (
            f"{self.path} is missing and {why}. The '{self.split}' split needs {', '.join(split_files(self.split))} "
            f"in {self.path.parent}. Put the files there, {remedies}."
        )


@dataclass(frozen=True)
class KMNISTData:
    """One split held in memory: ``images`` uint8 [N, 28, 28], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    split: str

    def __len__(self) -> int:
        return self.images.shape[0]


def raw_folder(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "KMNIST" / "raw"


def split_files(split: str) -> list[str]:
    """The .gz file names one split needs, images before labels."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    parts = ("train", "test") if split == "all" else (split,)
    return [f"{_PREFIX[p]}-{kind}-ubyte.gz" for p in parts for kind in ("images-idx3", "labels-idx1")]


def to_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1], the generator's tanh range.

    The chapter divides by 256, giving [0, 1) while the generator emits [-1, 1]: the discriminator can then tell
    real from fake by the sign alone. Mapping real images onto [-1, 1] fixes that.
    """
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_signed_unit`, clamped: float in [-1, 1] -> uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def ensure_files(
    data_dir: str | os.PathLike, split: str, download: bool = True, verify: bool = True
) -> list[Path]:
    """Check (and, if allowed, download) the files of ``split``; return their paths.

    ``verify=False`` skips the MD5 check (for IDX files of your own in the same layout). Raises :class:`DataError`
    naming the file and what to do when a file is missing with downloads off (:class:`MissingDataError`), cannot
    be downloaded, or does not match the official MD5.
    """
    folder = raw_folder(data_dir)
    paths = []
    for name in split_files(split):
        path = folder / name
        if path.exists() and not path.is_file():
            raise DataError(f"{path} is a folder, not the data file {name}; remove it (and put the file there, or "
                            f"let it download without --no-download)")
        if not path.exists():
            if not download:
                raise MissingDataError(path, split)
            _download(path)
        actual = calculate_md5(str(path)) if verify else MD5[name]
        if actual != MD5[name]:
            raise DataError(
                f"{path} has MD5 {actual}, but the official {name} has MD5 {MD5[name]}: the file is corrupt, "
                f"truncated or not Kuzushiji-MNIST. Delete it and run again to re-download it (or copy a good "
                f"copy there)."
            )
        paths.append(path)
    return paths


def _download(path: Path) -> None:
    errors = []
    for mirror in MIRRORS:
        try:
            download_url(mirror + path.name, root=str(path.parent), filename=path.name, md5=MD5[path.name])
            if path.exists():
                return
        except Exception as error:  # urllib/HTTP/OS errors: report them all together below
            errors.append(f"{mirror}{path.name}: {error}")
    raise DataError(
        f"could not download {path.name} into {path.parent} ({'; '.join(errors) or 'no file written'}). "
        f"Check the network, or copy the file there by hand and pass --no-download."
    )


def read_idx(path: str | os.PathLike, kind: str) -> torch.Tensor:
    """Read a gzipped IDX file of unsigned bytes (``kind`` 'images' -> [N, 28, 28], 'labels' -> [N]).

    Works on read-only folders (no extraction to disk). Every failure is a :class:`DataError` naming the file.
    """
    path = Path(path)
    hint = f"Delete {path} and run again to re-download it."
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a readable gzip file ({error}). {hint}") from None
    ndim = 3 if kind == "images" else 1
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes). {hint}")
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise DataError(
            f"{path} does not start with the IDX magic number of uint8 {kind} ({_IDX_MAGIC[kind]:#010x}); "
            f"found {magic:#010x}. It is not a KMNIST {kind} file. {hint}"
        )
    shape = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path} declares shape {shape} ({expected} bytes of data) but holds {len(data) - header}: the file "
            f"is truncated or corrupt. {hint}"
        )
    if kind == "images" and shape[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
        raise DataError(f"{path} holds images of {shape[1]}x{shape[2]}, expected 28x28. {hint}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def load_kmnist(
    data_dir: str | os.PathLike, split: str = "train", download: bool = True, verify: bool = True
) -> KMNISTData:
    """Load ``split`` ('train' 60,000, 'test' 10,000, 'all' 70,000 images) into memory, MD5-verified by default."""
    paths = ensure_files(data_dir, split, download, verify)
    images, labels = [], []
    for image_path, label_path in zip(paths[0::2], paths[1::2], strict=True):
        split_images, split_labels = read_idx(image_path, "images"), read_idx(label_path, "labels")
        if len(split_images) != len(split_labels):
            raise DataError(
                f"{image_path} holds {len(split_images)} images but {label_path} holds {len(split_labels)} "
                f"labels. Delete both and run again to re-download them."
            )
        images.append(split_images)
        labels.append(split_labels.long())
    return KMNISTData(torch.cat(images), torch.cat(labels), split)


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of one epoch, the same on every process: it depends only on the run seed and the epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator)


class ShardedBatches:
    """Global batches of ``global_batch_size`` images, each process taking its own contiguous slice.

    Every epoch is one permutation shared by all processes; the last incomplete global batch is dropped so that
    every step sees the same number of images on every process. Batches are drawn by indexing the in-memory uint8
    tensor (on the training device) and scaled to [-1, 1] there: no per-item Python work. ``labels`` (int64 [N],
    for a class-conditional run) are drawn by the same indices as their images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        num_processes: int = 1,
        dtype: torch.dtype = torch.float32,
        labels: torch.Tensor | None = None,
    ):
        if global_batch_size % num_processes:
            raise ValueError(
                f"the global batch size {global_batch_size} does not divide by the {num_processes} processes"
            )
        if len(images) < global_batch_size:
            raise ValueError(f"{len(images)} images are fewer than one global batch of {global_batch_size}")
        if labels is not None and labels.shape != images.shape[:1]:
            raise ValueError(f"{len(images)} images need as many labels, got labels of shape {list(labels.shape)}")
        self.images = images
        self.labels = labels
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // num_processes
        self.seed = seed
        self.process_index = process_index
        self.dtype = dtype

    @property
    def steps_per_epoch(self) -> int:
        return len(self.images) // self.global_batch_size

    def _local_slice(self, batch: int) -> slice:
        start = batch * self.global_batch_size + self.process_index * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def local_indices(self, epoch: int, batch: int) -> torch.Tensor:
        """Indices (into ``images``) of this process's share of global batch ``batch`` of ``epoch``."""
        return epoch_permutation(len(self.images), self.seed, epoch)[self._local_slice(batch)]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """This process's batches of ``epoch`` from ``start_batch`` on, [B, 1, 28, 28] in [-1, 1]."""
        for images, _ in self.labelled_epoch(epoch, start_batch):
            yield images

    def labelled_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`epoch`'s batches with their labels int64 [B] (None when built without labels)."""
        order = epoch_permutation(len(self.images), self.seed, epoch).to(self.images.device)
        for batch in range(start_batch, self.steps_per_epoch):
            indices = order[self._local_slice(batch)]
            images = to_signed_unit(self.images[indices]).unsqueeze(1).to(self.dtype)
            yield images, (self.labels[indices] if self.labels is not None else None)


def first_classes(data: KMNISTData, num_classes: int) -> KMNISTData:
    """The images of labels 0..num_classes-1 (all of them for 0, an unconditional run, or for every class)."""
    if num_classes in (0, NUM_CLASSES):
        return data
    keep = data.labels < num_classes
    return KMNISTData(data.images[keep], data.labels[keep], data.split)


def class_exemplars(data: KMNISTData, num_classes: int) -> torch.Tensor:
    """uint8 [num_classes, 28, 28]: the first image of each class in the split, which labels a class's row of
    samples in the pictures (a real image shows the character where no font can: matplotlib's have no kana)."""
    firsts = []
    for label in range(num_classes):
        (where,) = torch.nonzero(data.labels == label, as_tuple=True)
        if not len(where):
            raise DataError(f"the {data.split} split holds no image of class {label}")
        firsts.append(where[0])
    return data.images[torch.stack(firsts)]
