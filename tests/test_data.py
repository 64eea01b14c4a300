from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gan.data import (
    MD5,
    DataError,
    ShardedBatches,
    epoch_permutation,
    load_kmnist,
    read_idx,
    split_files,
    to_signed_unit,
    to_uint8,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file of unsigned bytes, as the KMNIST release writes them."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_split(root: Path, prefix: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    write_idx(root / "KMNIST" / "raw" / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / "KMNIST" / "raw" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def copy_test_split(shared_data: Path, target: Path) -> Path:
    raw = target / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in split_files("test"):
        shutil.copy(shared_data / "KMNIST" / "raw" / name, raw / name)
    return raw


def test_official_test_split_loads(shared_data):
    data = load_kmnist(shared_data, "test", download=False)
    assert data.images.shape == (10_000, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (10_000,) and data.labels.dtype == torch.int64
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    scaled = to_signed_unit(data.images)
    assert scaled.min().item() == -1.0 and scaled.max().item() == 1.0
    assert torch.equal(to_uint8(scaled), data.images)


def test_train_and_all_splits_from_small_idx_files(tmp_path):
    train_images, train_labels = make_split(tmp_path, "train", 30, seed=1)
    test_images, _ = make_split(tmp_path, "t10k", 20, seed=2)
    train = load_kmnist(tmp_path, "train", download=False, verify=False)
    assert torch.equal(train.images, torch.from_numpy(train_images))
    assert torch.equal(train.labels, torch.from_numpy(train_labels).long())
    both = load_kmnist(tmp_path, "all", download=False, verify=False)
    assert len(both) == 50 and torch.equal(both.images[30:], torch.from_numpy(test_images))


def test_one_split_loads_without_the_others(shared_data, tmp_path):
    copy_test_split(shared_data, tmp_path)  # only the test split: torchvision's KMNIST class refuses this
    assert len(load_kmnist(tmp_path, "test", download=False)) == 10_000


def test_missing_split_without_download_names_file_and_remedy(shared_data):
    with pytest.raises(DataError) as error:
        load_kmnist(shared_data, "train", download=False)
    message = str(error.value)
    assert (
        "train-images-idx3-ubyte.gz" in message and "--no-download" in message and "--split test" in message
    )


def test_checksum_mismatch_is_reported(shared_data, tmp_path):
    raw = copy_test_split(shared_data, tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 0xFF
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz has MD5 ") as error:
        load_kmnist(tmp_path, "test", download=False)
    # the damaged file's sum and the official one, both named
    assert hashlib.md5(labels.read_bytes()).hexdigest() in str(error.value)
    assert MD5[labels.name] in str(error.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (lambda good: good[: len(good) // 2], "not a readable gzip file"),  # truncated download
        (lambda good: gzip.compress(gzip.decompress(good)[:-100]), "truncated or corrupt"),
        (lambda good: gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 40), "IDX magic number"),
        (lambda good: b"<html>404 Not Found</html>", "not a readable gzip file"),
    ],
    ids=["truncated-gzip", "short-data", "labels-not-images", "html"],
)
def test_damaged_files_give_one_clear_error(tmp_path, content, expected):
    make_split(tmp_path, "train", 10, seed=0)
    path = tmp_path / "KMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(DataError, match=expected) as error:
        load_kmnist(tmp_path, "train", download=False, verify=False)
    assert str(path) in str(error.value)
    with pytest.raises(DataError):
        read_idx(path, "images")


def test_permutation_depends_on_seed_and_epoch_only():
    assert torch.equal(epoch_permutation(100, 3, 1), epoch_permutation(100, 3, 1))
    assert not torch.equal(epoch_permutation(100, 3, 1), epoch_permutation(100, 3, 2))
    assert not torch.equal(epoch_permutation(100, 3, 1), epoch_permutation(100, 4, 1))


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_shards_are_disjoint_and_cover_each_global_batch(num_processes):
    images = torch.arange(1000, dtype=torch.int64)[:, None, None].expand(1000, 28, 28).to(torch.uint8)
    ids = torch.arange(1000)
    shards = [
        ShardedBatches(ids, 64, seed=7, process_index=rank, num_processes=num_processes)
        for rank in range(num_processes)
    ]
    assert shards[0].steps_per_epoch == 1000 // 64
    order = epoch_permutation(1000, 7, 2)
    for batch in range(shards[0].steps_per_epoch):
        parts = [shard.local_indices(2, batch) for shard in shards]
        assert all(len(p) == 64 // num_processes for p in parts)
        joined = torch.cat(parts)
        assert len(set(joined.tolist())) == 64
        assert torch.equal(joined, order[batch * 64 : (batch + 1) * 64])
    # the tensors a process trains on are its indices' images, scaled to [-1, 1]
    batches = ShardedBatches(images, 64, seed=7, process_index=num_processes - 1, num_processes=num_processes)
    first = next(batches.epoch(2))
    expected = to_signed_unit(images[batches.local_indices(2, 0)]).unsqueeze(1)
    assert first.shape == (64 // num_processes, 1, 28, 28) and torch.equal(first, expected)
    assert len(list(batches.epoch(2, start_batch=3))) == batches.steps_per_epoch - 3


def test_batch_must_divide_by_processes():
    with pytest.raises(ValueError, match="does not divide by the 3 processes"):
        ShardedBatches(torch.zeros(100, 28, 28, dtype=torch.uint8), 64, 0, 0, 3)
