"""Sample quality: a set of generated images against the real images of a split, in a classifier's feature space.

The features and class probabilities come from the KMNIST classifier of :mod:`gan.classifier`. Against the real
images of one split, a set of generated images gets (:data:`QUALITY_METRICS`):

- ``fid``, ``kid`` (and ``kid_std``): Frechet and kernel distances of the classifier's penultimate features,
  computed by torchmetrics;
- ``classifier_score``: exp(E_x[KL(p(y|x) || p(y))]), between 1 (one class, or no confident class) and 10;
- ``class_coverage``: entropy of the predicted-class histogram / log 10 (1: all ten classes equally often);
- ``confident_share``: the share of samples whose top class has probability > 0.9;
- ``precision``, ``recall``: k-nearest-neighbour manifolds in feature space (Kynkaanniemi et al. 2019).

A class-conditional generator's samples come with the labels they were asked for; with those labels
``evaluate(images, labels)`` adds :data:`CONDITIONAL_METRICS`, each class's samples measured against the real
images of that class:

- ``class_accuracy``: the share of samples the classifier assigns to their requested class;
- ``class_fid_mean``, ``class_fid_worst`` and ``class_fid_worst_class`` (that class's label, as a float like the
  rest): FID of each class's samples against the real images of the class, averaged over the requested classes,
  and the largest;
- ``class_precision_mean``, ``class_recall_mean``: precision and recall within each class, averaged.

:class:`Evaluator` loads the classifier and the real features once; ``evaluate(images)`` then costs one
classifier pass over the samples plus the statistics. The classifier runs once per image set and its features
feed FID, KID and precision/recall alike, so torchmetrics receives features, not images
(:class:`_FeaturesGiven`). Images from a saved generator come from :mod:`gan.samplers`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gan.classifier import CLASSIFIER_WEIGHTS, EvaluationError, KMNISTClassifier, load_classifier
from gan.data import CLASS_CHARACTERS, NUM_CLASSES, load_kmnist, to_signed_unit

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
# Added by evaluate(images, labels): what a class-conditional generator makes of each requested class.
CONDITIONAL_METRICS = (
    "class_accuracy",
    "class_fid_mean",
    "class_fid_worst",
    "class_fid_worst_class",
    "class_precision_mean",
    "class_recall_mean",
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


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = PRECISION_RECALL_K, chunk: int = 2048
) -> tuple[float, float]:
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


def compare(
    real: Classified, fake: Classified, k: int = PRECISION_RECALL_K, kid_subsets: int = 100, seed: int = 0
) -> dict[str, float]:
    """Every metric of ``fake`` against ``real`` (keys: :data:`QUALITY_METRICS`).

    Precision/recall use equally many points of each set: a seeded random subset of the larger one.
    """
    kid, kid_std = kernel_distance(real.features, fake.features, kid_subsets, seed)
    precision, recall = balanced_precision_recall(real.features, fake.features, k, seed)
    return {
        "fid": frechet_distance(real.features, fake.features),
        "kid": kid,
        "kid_std": kid_std,
        **class_metrics(fake.probabilities),
        "precision": precision,
        "recall": recall,
    }


def balanced_precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int, seed: int) -> tuple[float, float]:
    """:func:`precision_recall` of equally many points of each feature set: a seeded subset of the larger one."""
    size = min(len(real), len(fake))
    return precision_recall(_random_subset(real, size, seed), _random_subset(fake, size, seed + 1), k)


def _random_subset(features: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    if size >= len(features):
        return features
    return features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:size]]


# ------------------------------------------------------------------------------------------------------------
# Per class: a conditional generator's samples against the real images of the class they were asked for
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassResult:
    """One requested class: its samples against the real images of that class."""

    label: int
    samples: int
    real_images: int
    accuracy: float  # share of the class's samples the classifier assigns to it
    fid: float
    precision: float
    recall: float

    @property
    def character(self) -> str:
        return CLASS_CHARACTERS[self.label]


def check_labels(labels: torch.Tensor, num_images: int, k: int) -> torch.Tensor:
    """``labels`` as CPU int64 [num_images], or an EvaluationError that says what was expected.

    Every requested class needs more than ``k`` samples: precision/recall within the class use k neighbours.
    """
    expected = f"int64 labels [{num_images}] in 0..{NUM_CLASSES - 1}, one per image"
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise EvaluationError(f"expected {expected}, got {type(labels).__name__} {getattr(labels, 'dtype', '')}")
    if tuple(labels.shape) != (num_images,):
        raise EvaluationError(f"expected {expected}, got shape {list(labels.shape)}")
    labels = labels.cpu().long()
    outside = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if len(outside):
        raise EvaluationError(f"expected {expected}; {len(outside)} are not, e.g. {outside[0].item()}")
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    few = [(label, count) for label, count in enumerate(counts.tolist()) if 0 < count <= k]
    if few:
        label, count = few[0]
        raise EvaluationError(
            f"class {label} ({CLASS_CHARACTERS[label]}) has {count} samples, but the per-class metrics need more "
            f"than k={k} of every requested class: make at least {(k + 1) * int((counts > 0).sum())} samples"
        )
    return labels


def per_class(
    real: Classified,
    real_labels: torch.Tensor,
    fake: Classified,
    fake_labels: torch.Tensor,
    k: int = PRECISION_RECALL_K,
    seed: int = 0,
) -> list[ClassResult]:
    """Each class requested in ``fake_labels`` (ascending): its samples against ``real``'s images of the class."""
    fake_labels = check_labels(fake_labels, len(fake), k)
    real_labels = real_labels.cpu()
    correct = fake.probabilities.argmax(1).cpu() == fake_labels
    results = []
    for label in fake_labels.unique().tolist():
        fake_index, real_index = (fake_labels == label).nonzero()[:, 0], (real_labels == label).nonzero()[:, 0]
        if len(real_index) <= k:
            raise EvaluationError(
                f"the reference holds {len(real_index)} real images of class {label} ({CLASS_CHARACTERS[label]}): "
                f"too few to compare that class's samples with (more than k={k} needed); choose a larger split"
            )
        real_class, fake_class = real.subset(real_index).features, fake.subset(fake_index).features
        precision, recall = balanced_precision_recall(real_class, fake_class, k, seed)
        results.append(
            ClassResult(
                label=label,
                samples=len(fake_index),
                real_images=len(real_index),
                accuracy=correct[fake_index].double().mean().item(),
                fid=frechet_distance(real_class, fake_class),
                precision=precision,
                recall=recall,
            )
        )
    return results


def summarise_classes(classes: list[ClassResult]) -> dict[str, float]:
    """:data:`CONDITIONAL_METRICS` of the per-class results (means over the requested classes)."""
    worst = max(classes, key=lambda result: result.fid)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    # class_accuracy over all samples: with the balanced labels of gan.noise.sample_labels, the mean over classes
    return {
        "class_accuracy": sum(result.accuracy * result.samples for result in classes)
        / sum(result.samples for result in classes),
        "class_fid_mean": mean([result.fid for result in classes]),
        "class_fid_worst": worst.fid,
        "class_fid_worst_class": float(worst.label),
        "class_precision_mean": mean([result.precision for result in classes]),
        "class_recall_mean": mean([result.recall for result in classes]),
    }


@dataclass(frozen=True)
class Report:
    """What :meth:`Evaluator.report` measures: ``metrics`` (:data:`QUALITY_METRICS`, plus
    :data:`CONDITIONAL_METRICS` when labels were given) and, then, one :class:`ClassResult` per requested class."""

    metrics: dict[str, float]
    classes: list[ClassResult] = field(default_factory=list)


class Evaluator:
    """Built once (classifier, real features and labels loaded), then ``evaluate(images[, labels])`` as often as needed.

    ``images``: float [N, 1, 28, 28] in [-1, 1] on any device; ``labels`` (a conditional generator's): int64 [N],
    the class each image was asked to show. The reference is every image of ``split``, and for the per-class
    metrics every image of the split with that class's label.
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
        self.real_labels = data.labels  # int64 [N]: the per-class reference

    def classify(self, images: torch.Tensor) -> Classified:
        return classify(self.classifier, images, self.batch_size)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Every metric (:data:`QUALITY_METRICS`) of ``images`` against all real images of the split; with
        ``labels`` (int64 [N], the class each image was asked for) also :data:`CONDITIONAL_METRICS`."""
        return self.report(images, labels).metrics

    def report(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Report:
        """:meth:`evaluate`'s metrics and, with ``labels``, the per-class results behind them."""
        if labels is not None:  # refused before the classifier pass
            check_labels(labels, len(images), self.k)
        return self._report(self.real, self.real_labels, self.classify(images), labels)

    def _report(
        self, real: Classified, real_labels: torch.Tensor, fake: Classified, fake_labels: torch.Tensor | None
    ) -> Report:
        metrics = compare(real, fake, self.k, self.kid_subsets, self.seed)
        if fake_labels is None:
            return Report(metrics)
        classes = per_class(real, real_labels, fake, fake_labels, self.k, self.seed)
        return Report({**metrics, **summarise_classes(classes)}, classes)

    def real_floor(self, per_class_metrics: bool = False) -> dict[str, float]:
        """The metrics of one half of the real images against the other (a seeded split into disjoint halves).

        What a perfect generator scores with this many samples: the floor of FID/KID, the ceiling of the rest. With
        ``per_class_metrics`` the second half's true labels stand for requested ones (:data:`CONDITIONAL_METRICS`
        too: its class accuracy is the classifier's accuracy on those images).
        """
        order = torch.randperm(len(self.real), generator=torch.Generator().manual_seed(self.seed))
        half = len(order) // 2
        first, second = order[:half], order[half : 2 * half]
        second_labels = self.real_labels[second] if per_class_metrics else None
        report = self._report(self.real.subset(first), self.real_labels[first], self.real.subset(second), second_labels)
        return report.metrics
