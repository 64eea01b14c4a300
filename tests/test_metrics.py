"""gan/metrics.py: the statistics on cases whose answers are known, then on real images and noise."""

from __future__ import annotations

import math

import pytest
import torch

from gan.classifier import EvaluationError, KMNISTClassifier
from gan.data import load_kmnist, to_signed_unit
from gan.metrics import QUALITY_METRICS, Evaluator, class_metrics, classify, compare, precision_recall


@pytest.fixture(scope="module")
def evaluator(shared_data) -> Evaluator:
    return Evaluator(shared_data, "test", "cpu", kid_subsets=10)  # 10 KID subsets, not 100: a fast suite


@pytest.fixture(scope="module")
def floor(evaluator) -> dict[str, float]:
    return evaluator.real_floor()


@pytest.fixture(scope="module")
def real_images(shared_data) -> torch.Tensor:
    return to_signed_unit(load_kmnist(shared_data, "test", download=False).images).unsqueeze(1)


# --- the statistics on hand-made cases ----------------------------------------------------------------------


def test_class_metrics_of_known_distributions():
    one_hot = torch.eye(10).repeat(50, 1)  # every class equally often, each sample certain
    assert class_metrics(one_hot) == pytest.approx(
        {"classifier_score": 10.0, "class_coverage": 1.0, "confident_share": 1.0}
    )
    one_class = torch.eye(10)[torch.zeros(500, dtype=torch.long)]
    assert class_metrics(one_class) == pytest.approx(
        {"classifier_score": 1.0, "class_coverage": 0.0, "confident_share": 1.0}, abs=1e-12
    )
    undecided = torch.full((500, 10), 0.1)
    assert class_metrics(undecided) == pytest.approx(
        {"classifier_score": 1.0, "class_coverage": 0.0, "confident_share": 0.0}, abs=1e-12
    )
    two_classes = torch.eye(10)[torch.arange(500) % 2]
    assert class_metrics(two_classes)["classifier_score"] == pytest.approx(2.0)
    assert class_metrics(two_classes)["class_coverage"] == pytest.approx(math.log(2) / math.log(10))


def test_precision_recall_of_known_point_sets():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=generator)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    # Far away: no fake point lies in a real ball and vice versa.
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Mode dropping: fakes only from one half-space are all plausible (precision 1) but miss half the reals.
    one_side = real[real[:, 0] > 0]
    fake = torch.cat([one_side, one_side])[: len(real)] + 1e-4
    precision, recall = precision_recall(real, fake)
    assert precision == 1.0
    assert 0.3 < recall < 0.7


# --- the metrics on real images (slow: the classifier runs over all 10,000 test images, then the statistics) --


@pytest.mark.slow
def test_identical_sets_give_zero_distance(evaluator, real_images):
    first = torch.arange(3000)
    real = evaluator.real.subset(first)
    again = evaluator.classify(real_images[first])  # the same images through the classifier again
    torch.testing.assert_close(again.features, real.features)
    rng_before = torch.get_rng_state()
    metrics = compare(real, again, kid_subsets=10)
    assert torch.equal(torch.get_rng_state(), rng_before)  # KID's subsets come from a forked, seeded RNG
    assert set(metrics) == set(QUALITY_METRICS)
    assert abs(metrics["fid"]) < 1e-3
    # KID is unbiased: identical sets give 0 up to the noise of drawing different subsets from each.
    assert abs(metrics["kid"]) < 2 * metrics["kid_std"]
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0


@pytest.mark.slow
def test_one_repeated_image_covers_nothing(evaluator, real_images, floor):
    metrics = evaluator.evaluate(real_images[:1].repeat(2000, 1, 1, 1))
    assert metrics["class_coverage"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["classifier_score"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["recall"] < 0.01
    assert metrics["fid"] > 20 * floor["fid"]


@pytest.mark.slow
def test_real_halves_beat_noise_by_a_wide_margin(evaluator, floor):
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    metrics = evaluator.evaluate(noise)
    assert floor["fid"] * 20 < metrics["fid"]
    assert floor["kid"] * 20 < metrics["kid"]
    assert floor["precision"] > 0.6 > 0.05 > metrics["precision"]
    assert floor["recall"] > 0.6 > 0.05 > metrics["recall"]
    assert floor["class_coverage"] > 0.99
    assert floor["classifier_score"] > 8.0 > metrics["classifier_score"]
    assert floor["confident_share"] > 0.85


def test_bad_images_are_refused_with_a_reason():
    classifier = KMNISTClassifier(width=4, feature_dim=8).eval()  # refused before any classifier pass
    with pytest.raises(EvaluationError, match=r"\[N, 1, 28, 28\]"):
        classify(classifier, torch.zeros(10, 28, 28))
    with pytest.raises(EvaluationError, match="at least 2 images"):
        classify(classifier, torch.zeros(1, 1, 28, 28))
    with pytest.raises(EvaluationError, match="NaN"):
        classify(classifier, torch.full((10, 1, 28, 28), float("nan")))
