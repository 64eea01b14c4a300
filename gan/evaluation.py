"""Sample quality measured in the feature space of a small KMNIST classifier.

Inception-based FID needs weights from the internet and judges 28x28 grayscale characters poorly, so the
metrics here use a CNN trained on KMNIST itself (its weights and the record of how they were made ship in
``gan/assets/``; ``python -m gan.evaluate train-classifier`` remakes them). Against the real images of one
split, a set of generated images gets:

- ``fid``, ``kid`` (and ``kid_std``): Frechet and kernel distances of the classifier's penultimate features,
  computed by torchmetrics;
- ``classifier_score``: exp(E_x[KL(p(y|x) || p(y))]), between 1 (one class, or no confident class) and 10;
- ``class_coverage``: entropy of the predicted-class histogram / log 10 (1: all ten classes equally often);
- ``confident_share``: the share of samples whose top class has probability > 0.9;
- ``precision``, ``recall``: k-nearest-neighbour manifolds in feature space (Kynkaanniemi et al. 2019).

:class:`Evaluator` loads the classifier and the real features once; ``evaluate(images)`` then costs one
classifier pass over the samples plus the statistics. The classifier runs once per image set and its features
feed FID, KID and precision/recall alike, so torchmetrics receives features, not images
(:class:`_FeaturesGiven`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gan.artifacts import ArtifactError, load_generator, write_json_atomic
from gan.data import NUM_CLASSES, load_kmnist, to_signed_unit

ASSETS = Path(__file__).resolve().parent / "assets"
CLASSIFIER_WEIGHTS = ASSETS / "kmnist_classifier.safetensors"
RECORD_SUFFIX = ".json"  # the record sits next to the weights: kmnist_classifier.json
CONFIDENCE_THRESHOLD = 0.9
METRIC_NAMES = (
    "fid",
    "kid",
    "kid_std",
    "classifier_score",
    "class_coverage",
    "confident_share",
    "precision",
    "recall",
)


class EvaluationError(RuntimeError):
    """The classifier's files are missing or disagree, or the images cannot be evaluated; says what to do."""


# ------------------------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------------------------


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


def record_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(RECORD_SUFFIX)


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
        found = []
        if not 0 < self.holdout_fraction < 1:
            found.append(f"--holdout-fraction must be in (0, 1), got {self.holdout_fraction}")
        for name in ("epochs", "batch_size", "width", "feature_dim"):
            if getattr(self, name) < 1:
                found.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            found.append(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            found.append(f"--weight-decay must be non-negative, got {self.weight_decay}")
        if self.seed < 0:
            found.append(f"--seed must be non-negative, got {self.seed}")
        return found


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


def save_classifier(classifier: KMNISTClassifier, weights_path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write the weights and, next to them, ``record`` plus the architecture and the weights' SHA-256."""
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in classifier.state_dict().items()}
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, weights_path)
    full_record = {
        "architecture": {
            "class": "gan.evaluation.KMNISTClassifier",
            "width": classifier.width,
            "feature_dim": classifier.feature_dim,
        },
        **record,
        "weights_file": weights_path.name,
        "weights_sha256": _sha256(weights_path),
    }
    write_json_atomic(record_path(weights_path), full_record)


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


# ------------------------------------------------------------------------------------------------------------
# The metrics
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classified:
    """What the classifier says about one set of images: ``features`` [N, D] and ``probabilities`` [N, 10]."""

    features: torch.Tensor
    probabilities: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, index: torch.Tensor) -> Classified:
        index = index.to(self.features.device)
        return Classified(self.features[index], self.probabilities[index])


@torch.no_grad()  # not inference_mode: later ops on inference tensors run several times slower
def classify(classifier: KMNISTClassifier, images: torch.Tensor, batch_size: int = 1000) -> Classified:
    """Run ``classifier`` (in its current mode) over float images [N, 1, 28, 28] in [-1, 1]."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28) or not images.is_floating_point():
        raise EvaluationError(
            f"expected float images [N, 1, 28, 28] in [-1, 1], got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) < 2:
        raise EvaluationError(f"at least 2 images are needed to compare distributions, got {len(images)}")
    if not torch.isfinite(images).all():
        raise EvaluationError("the images hold NaN or infinite values: the generator has diverged")
    device = next(classifier.parameters()).device
    features, probabilities = [], []
    for batch in images.split(batch_size):
        batch = batch.to(device, torch.float32).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
        batch_features, logits = classifier(batch)
        features.append(batch_features.float())
        probabilities.append(logits.float().softmax(1))
    return Classified(torch.cat(features), torch.cat(probabilities))


class _FeaturesGiven(nn.Module):
    """The "feature extractor" handed to torchmetrics: its input already is the classifier's features.

    The classifier runs once per image set (:func:`classify`) and its features serve FID, KID and
    precision/recall alike; torchmetrics supplies the statistics.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets [N, D] (torchmetrics, float64 statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # torchmetrics is the optional 'eval' extra

    # sync_on_compute=False: the trainer evaluates on its main process alone; a sync would wait forever.
    fid = FrechetInceptionDistance(feature=_FeaturesGiven(real.shape[1]), sync_on_compute=False)
    fid = fid.to(real.device)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return fid.compute().item()


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of up to 1,000 of each set; cubic polynomial kernel)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(
            feature=_FeaturesGiven(real.shape[1]),
            subsets=subsets,
            subset_size=min(1000, len(real), len(fake)),
            sync_on_compute=False,
        ).to(real.device)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    # KID draws its subsets from the global RNG: seed a fork of it, so that the result is reproducible and a
    # training run's random stream is the same whether or not it evaluates.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return mean.item(), std.item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 2048) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature sets [N, D] of equal size.

    Each point of a set stands for a ball reaching to its k-th nearest neighbour in that set. Precision: the
    share of fake points inside some real ball; recall: the share of real points inside some fake ball.
    """
    precision = _share_inside(fake, real, _kth_neighbour_distance(real, k, chunk), chunk)
    recall = _share_inside(real, fake, _kth_neighbour_distance(fake, k, chunk), chunk)
    return precision, recall


def _kth_neighbour_distance(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    if len(points) <= k:
        raise EvaluationError(f"precision/recall with k={k} needs more than {k} samples, got {len(points)}")
    # k + 1: each point is its own nearest neighbour. Chunks of rows keep the distance matrix small.
    distances = [torch.cdist(rows, points).kthvalue(k + 1, dim=1).values for rows in points.split(chunk)]
    return torch.cat(distances)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = [(torch.cdist(rows, centres) <= radii).any(1) for rows in points.split(chunk)]
    return torch.cat(inside).double().mean().item()


def class_metrics(probabilities: torch.Tensor) -> dict[str, float]:
    """Classifier score, class coverage and confident share of class probabilities [N, 10]."""
    p = probabilities.double()
    marginal = p.mean(0, keepdim=True)  # p(y)
    kl = torch.special.xlogy(p, p).sum(1) - torch.special.xlogy(p, marginal).sum(1)  # KL(p(y|x) || p(y))
    histogram = torch.bincount(p.argmax(1), minlength=NUM_CLASSES).double() / len(p)
    return {
        "classifier_score": kl.mean().exp().item(),
        # + 0.0 turns the -0.0 of a single-class histogram into 0.0
        "class_coverage": (-torch.special.xlogy(histogram, histogram).sum() / math.log(NUM_CLASSES)).item() + 0.0,
        "confident_share": (p.max(1).values > CONFIDENCE_THRESHOLD).double().mean().item(),
    }


def compare(real: Classified, fake: Classified, k: int = 3, kid_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """Every metric of ``fake`` against ``real`` (keys: :data:`METRIC_NAMES`).

    Precision/recall use equally many points of each set: a seeded random subset of the larger one.
    """
    kid, kid_std = kernel_distance(real.features, fake.features, kid_subsets, seed)
    size = min(len(real), len(fake))
    precision, recall = precision_recall(
        _random_subset(real.features, size, seed), _random_subset(fake.features, size, seed + 1), k
    )
    return {
        "fid": frechet_distance(real.features, fake.features),
        "kid": kid,
        "kid_std": kid_std,
        **class_metrics(fake.probabilities),
        "precision": precision,
        "recall": recall,
    }


def _random_subset(features: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    if size >= len(features):
        return features
    return features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:size]]


class Evaluator:
    """Built once (classifier and real features loaded), then ``evaluate(images)`` as often as needed.

    ``images``: float [N, 1, 28, 28] in [-1, 1] on any device. The reference is every image of ``split``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "test",
        device: str | torch.device = "cpu",
        classifier_path: str | os.PathLike = CLASSIFIER_WEIGHTS,
        k: int = 3,
        kid_subsets: int = 100,
        seed: int = 0,
        batch_size: int = 1000,
        download: bool = False,
    ):
        if k < 1 or kid_subsets < 1 or batch_size < 1:
            raise ValueError(f"k, kid_subsets, batch_size must be at least 1, got {k}, {kid_subsets}, {batch_size}")
        self.classifier, self.classifier_record = load_classifier(classifier_path, device)
        self.classifier_path = Path(classifier_path)
        self.data_dir, self.split = str(data_dir), split
        self.k, self.kid_subsets, self.seed, self.batch_size = k, kid_subsets, seed, batch_size
        data = load_kmnist(data_dir, split, download)
        self.real = classify(self.classifier, to_signed_unit(data.images).unsqueeze(1), batch_size)

    def classify(self, images: torch.Tensor) -> Classified:
        return classify(self.classifier, images, self.batch_size)

    def evaluate(self, images: torch.Tensor) -> dict[str, float]:
        """Every metric (:data:`METRIC_NAMES`) of ``images`` against all real images of the split."""
        return compare(self.real, self.classify(images), self.k, self.kid_subsets, self.seed)

    def real_floor(self) -> dict[str, float]:
        """The metrics of one half of the real images against the other (a seeded split into disjoint halves).

        What a perfect generator scores with this many samples: the floor of FID/KID, the ceiling of the rest.
        """
        order = torch.randperm(len(self.real), generator=torch.Generator().manual_seed(self.seed))
        half = len(order) // 2
        first, second = self.real.subset(order[:half]), self.real.subset(order[half : 2 * half])
        return compare(first, second, self.k, self.kid_subsets, self.seed)


# ------------------------------------------------------------------------------------------------------------
# Images from a saved generator: a run folder (PyTorch) or an exported ONNX model (onnxruntime)
# ------------------------------------------------------------------------------------------------------------

Sampler = Callable[[torch.Tensor], torch.Tensor]
"""z float32 [B, latent_dim] (CPU) -> images [B, 1, 28, 28] in [-1, 1]."""


def latent_noise(num_samples: int, latent_dim: int, seed: int) -> torch.Tensor:
    """Standard normal z [num_samples, latent_dim] of ``seed``, drawn on the CPU, as every backend gets it."""
    return torch.randn(num_samples, latent_dim, generator=torch.Generator().manual_seed(seed))


def generate(
    sampler: Sampler, latent_dim: int, num_samples: int, seed: int = 0, batch_size: int = 1000
) -> torch.Tensor:
    """``num_samples`` images [N, 1, 28, 28] (CPU float32) from the seeded noise, ``batch_size`` at a time."""
    noise = latent_noise(num_samples, latent_dim, seed)
    return torch.cat([sampler(z).float().cpu() for z in noise.split(batch_size)])


def torch_sampler(generator: nn.Module) -> Sampler:
    """Sample ``generator`` as it is (the caller chooses eval or train mode) on the device and dtype of its weights."""
    weight = next(generator.parameters())

    @torch.no_grad()
    def sample(z: torch.Tensor) -> torch.Tensor:
        return generator(z.to(weight.device, weight.dtype))

    return sample


def onnx_sampler(path: str | os.PathLike) -> tuple[Sampler, int]:
    """(sampler, latent_dim) of a model written by export.py, run by onnxruntime on the CPU (:mod:`gan.inference`)."""
    try:
        from gan.inference import ModelError, OnnxGenerator  # imports onnxruntime: only needed for ONNX models
    except ImportError as error:
        raise EvaluationError(
            f"evaluating {path} needs onnxruntime ({error}); install it with `pip install -e '.[export]'`."
        ) from None
    try:
        generator = OnnxGenerator(path)
    except ModelError as error:  # one error type for every unusable model file, ONNX or run folder
        raise ArtifactError(str(error)) from None

    def sample(z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(generator.generate_raw(z.float().numpy()))

    return sample, generator.latent_dim


def open_generator(source: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Sampler, int, str]:
    """(sampler, latent_dim, kind) of a training run folder (kind 'pytorch') or an .onnx file ('onnx')."""
    source = Path(source)
    if source.suffix == ".onnx":
        sampler, latent_dim = onnx_sampler(source)
        return sampler, latent_dim, "onnx"
    if not source.is_dir():
        raise ArtifactError(f"{source} is neither a training run folder nor an .onnx file.")
    generator, config = load_generator(source, device)
    return torch_sampler(generator), int(config["latent_dim"]), "pytorch"
