"""The small KMNIST classifier in whose feature space sample quality is measured: model, training, save/load.

Inception-based FID needs weights from the internet and judges 28x28 grayscale characters poorly, so the metrics
(:mod:`gan.metrics`) use a CNN trained on KMNIST itself. Its weights and the record of how they were made ship in
``gan/assets/`` (``kmnist_classifier.safetensors`` and ``kmnist_classifier.json``);
``python -m gan.evaluate train-classifier`` remakes them. :func:`load_classifier` refuses weights whose SHA-256
is not the one their record states.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gan.atomic_write import atomic_path, write_json
from gan.cli import at_least_one, flag_name
from gan.data import NUM_CLASSES, to_signed_unit
from gan.noise import seed_problem

ASSETS = Path(__file__).resolve().parent / "assets"
CLASSIFIER_WEIGHTS = ASSETS / "kmnist_classifier.safetensors"
RECORD_SUFFIX = ".json"  # the record sits next to the weights: kmnist_classifier.json
# Typo guards: the widest layers are 4 x width channels and a (36 x width, feature_dim) matrix; these bounds keep
# the classifier within a few hundred MB.
MAX_WIDTH, MAX_FEATURE_DIM = 512, 1024


class EvaluationError(RuntimeError):
    """The classifier's files are missing or disagree, or the images cannot be evaluated; says what to do."""


class KMNISTClassifier(nn.Module):
    """images [N, 1, 28, 28] in [-1, 1] -> (features [N, feature_dim], logits [N, 10]).

    The features are the penultimate layer (after its ReLU): the space of FID, KID and precision/recall.
    """

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        w = width
        self.width, self.feature_dim = width, feature_dim
        self.body = nn.Sequential(
            _conv_block(1, w),  # (N, 32, 14, 14)
            _conv_block(w, w * 2),  # (N, 64, 7, 7)
            _conv_block(w * 2, w * 4),  # (N, 128, 3, 3)
            nn.Flatten(),  # (N, 1152)
            nn.Linear(w * 4 * 3 * 3, feature_dim),
            nn.ReLU(inplace=True),  # (N, 64): the features
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, NUM_CLASSES)  # (N, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return features, self.head(self.dropout(features))


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------


def holdout_split(num_images: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out indices): a seeded permutation; its last round(num_images * fraction) are held out."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    num_holdout = round(num_images * fraction)
    return order[: num_images - num_holdout], order[num_images - num_holdout :]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine warps (rotation +-10 deg, scale 0.9-1.1, shift +-2 px) of [-1, 1] images."""
    n = images.shape[0]
    uniform = lambda low, high: torch.empty(n).uniform_(low, high, generator=generator)  # noqa: E731
    angle, scale = uniform(-math.pi / 18, math.pi / 18), uniform(0.9, 1.1)
    shift_x, shift_y = uniform(-2 / 14, 2 / 14), uniform(-2 / 14, 2 / 14)  # grid units: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    # Warp (x + 1) so that the zeros padded in at the borders are the black background (-1), not grey (0).
    return F.grid_sample(images + 1, grid, align_corners=False) - 1


@torch.no_grad()
def accuracy(classifier: KMNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``classifier`` (put in eval mode) on uint8 ``images`` [N, 28, 28]."""
    classifier.eval()
    device = next(classifier.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = to_signed_unit(images[start : start + batch_size].to(device)).unsqueeze(1)
        correct += (classifier(batch)[1].argmax(1).cpu() == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


@dataclass
class ClassifierTraining:
    """How ``train-classifier`` trains; every field is a flag and is recorded next to the weights."""

    holdout_fraction: float = field(default=0.1, metadata={"help": "share of the split held out (never trained on)"})
    seed: int = field(default=0, metadata={"help": "seeds the held-out part, weights, batch order, augmentation"})
    epochs: int = field(default=12, metadata={"help": "passes over the training part"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate of a one-cycle schedule"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    width: int = field(default=32, metadata={"help": "channels of the first conv block (then x2, x4)"})
    # 64 features keep the weights under 1 MB and FID's 64x64 covariance well estimated from 2,000 samples.
    feature_dim: int = field(default=64, metadata={"help": "size of the penultimate (feature) layer"})

    def problems(self) -> list[str]:
        """Everything wrong with the values, as flag-named sentences (empty when all is well)."""
        found = []
        if not 0 < self.holdout_fraction < 1:
            found.append(f"--holdout-fraction must be in (0, 1), got {self.holdout_fraction}")
        found += at_least_one({name: getattr(self, name) for name in ("epochs", "batch_size", "width", "feature_dim")})
        for name, bound in (("width", MAX_WIDTH), ("feature_dim", MAX_FEATURE_DIM)):
            if getattr(self, name) > bound:
                found.append(f"{flag_name(name)} must be at most {bound}, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            found.append(f"--lr must be positive and finite, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:  # NaN fails too: it would train NaN weights without a word
            found.append(f"--weight-decay must be non-negative and finite, got {self.weight_decay}")
        return found + [problem for problem in [seed_problem(self.seed)] if problem]


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: ClassifierTraining,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[KMNISTClassifier, dict[str, Any]]:
    """Train on all but the held-out part of uint8 ``images`` [N, 28, 28]; return the model (eval), results.

    The held-out accuracy is that of the final weights (no selection on the held-out part). ``on_epoch(epoch,
    train_loss, holdout_accuracy)`` is called after each epoch. Seeds torch's global RNG (initial weights, dropout)
    with ``settings.seed``.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    train_index, holdout_index = holdout_split(len(images), settings.holdout_fraction, settings.seed)
    train_images = to_signed_unit(images[train_index]).unsqueeze(1).to(device)  # (M, 1, 28, 28)
    train_labels = labels[train_index].to(device)
    classifier = KMNISTClassifier(settings.width, settings.feature_dim).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_index) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch
    )
    history = []
    for epoch in range(settings.epochs):
        classifier.train()
        order = torch.randperm(len(train_index), generator=generator).to(device)
        total_loss = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            _, logits = classifier(augment(train_images[batch], generator))
            loss = F.cross_entropy(logits, train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        holdout_accuracy = accuracy(classifier, images[holdout_index], labels[holdout_index])
        train_loss = total_loss / len(order)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "holdout_accuracy": holdout_accuracy})
        if on_epoch is not None:
            on_epoch(epoch + 1, train_loss, holdout_accuracy)
    results = {
        "train_images": len(train_index),
        "holdout_images": len(holdout_index),
        "holdout_accuracy": history[-1]["holdout_accuracy"],
        "history": history,
    }
    return classifier.eval(), results


# ------------------------------------------------------------------------------------------------------------
# The weights and their record
# ------------------------------------------------------------------------------------------------------------


def record_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(RECORD_SUFFIX)


def save_classifier(classifier: KMNISTClassifier, weights_path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write the weights and, next to them, ``record`` plus the architecture and the weights' SHA-256."""
    weights_path = Path(weights_path)
    state = {k: v.detach().float().cpu().contiguous() for k, v in classifier.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp))
    full_record = {
        "architecture": {
            "class": f"{KMNISTClassifier.__module__}.{KMNISTClassifier.__qualname__}",
            "width": classifier.width,
            "feature_dim": classifier.feature_dim,
        },
        **record,
        "weights_file": weights_path.name,
        "weights_sha256": _sha256(weights_path),
    }
    write_json(record_path(weights_path), full_record)


def load_classifier(
    weights_path: str | os.PathLike = CLASSIFIER_WEIGHTS, device: str | torch.device = "cpu"
) -> tuple[KMNISTClassifier, dict[str, Any]]:
    """The classifier (eval mode) and its record; checks that the record describes exactly these weights."""
    weights_path = Path(weights_path)
    record_file = record_path(weights_path)
    remake = (
        "Remake both with `python -m gan.evaluate train-classifier --data-dir DATA --split test --out "
        f"{weights_path}` (or restore them from git)."
    )
    for path in (weights_path, record_file):
        if not path.is_file():
            raise EvaluationError(f"the classifier file {path} does not exist. {remake}")
    try:
        record = json.loads(record_file.read_text())
        architecture = record["architecture"]
        classifier = KMNISTClassifier(architecture["width"], architecture["feature_dim"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise EvaluationError(f"{record_file} is not a classifier record ({error!r}). {remake}") from None
    actual = _sha256(weights_path)
    if actual != record.get("weights_sha256"):
        raise EvaluationError(
            f"{weights_path} has SHA-256 {actual}, but {record_file} records {record.get('weights_sha256')}: "
            f"the weights are not the ones the record describes. {remake}"
        )
    try:
        classifier.load_state_dict(load_file(str(weights_path)))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise EvaluationError(f"{weights_path} does not hold the recorded classifier ({error}). {remake}") from None
    # Channels-last runs the convolutions, BatchNorm and pooling about a third faster on CPU (and no slower on GPU).
    return classifier.to(device, memory_format=torch.channels_last).eval(), record


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
