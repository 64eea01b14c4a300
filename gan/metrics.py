"""Sample quality: a set of generated images against the real images of a split, in a classifier's feature space.

The features and class probabilities come from the KMNIST classifier of :mod:`gan.classifier`. Against the real
images of one split, a set of generated images gets (:data:`QUALITY_METRICS`):

- ``fid``, ``kid`` (and ``kid_std``): Frechet and kernel distances of the classifier's penultimate features,
  computed by torchmetrics;
- ``classifier_score``: exp(E_x[KL(p(y|x) || p(y))]), between 1 (one class, or no confident class) and 10;
- ``class_coverage``: entropy of the predicted-class histogram / log 10 (1: all ten classes equally often);
- ``confident_share``: the share of samples whose top class has probability > 0.9;
- ``precision``, ``recall``: k-nearest-neighbour manifolds in feature space (Kynkaanniemi et al. 2019).

:class:`Evaluator` loads the classifier and the real features once; ``evaluate(images)`` then costs one
classifier pass over the samples plus the statistics. The classifier runs once per image set and its features
feed FID, KID and precision/recall alike, so torchmetrics receives features, not images
(:class:`_FeaturesGiven`). Images from a saved generator come from :mod:`gan.samplers`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gan.classifier import CLASSIFIER_WEIGHTS, EvaluationError, KMNISTClassifier, load_classifier
from gan.data import NUM_CLASSES, load_kmnist, to_signed_unit

CONFIDENCE_THRESHOLD = 0.9
PRECISION_RECALL_K = 3  # neighbours per point in precision/recall: a set needs more samples than this
QUALITY_METRICS = (
    "fid",
    "kid",
    "kid_std",
    "classifier_score",
    "class_coverage",
    "confident_share",
    "precision",
    "recall",
)


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


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PRECISION_RECALL_K,
                     chunk: int = 2048) -> tuple[float, float]:
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


def compare(real: Classified, fake: Classified, k: int = PRECISION_RECALL_K, kid_subsets: int = 100,
            seed: int = 0) -> dict[str, float]:
    """Every metric of ``fake`` against ``real`` (keys: :data:`QUALITY_METRICS`).

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
        k: int = PRECISION_RECALL_K,
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
        """Every metric (:data:`QUALITY_METRICS`) of ``images`` against all real images of the split."""
        return compare(self.real, self.classify(images), self.k, self.kid_subsets, self.seed)

    def real_floor(self) -> dict[str, float]:
        """The metrics of one half of the real images against the other (a seeded split into disjoint halves).

        What a perfect generator scores with this many samples: the floor of FID/KID, the ceiling of the rest.
        """
        order = torch.randperm(len(self.real), generator=torch.Generator().manual_seed(self.seed))
        half = len(order) // 2
        first, second = self.real.subset(order[:half]), self.real.subset(order[half : 2 * half])
        return compare(first, second, self.k, self.kid_subsets, self.seed)
