"""gan/metrics.py: the statistics on cases whose answers are known, then on real images and noise."""

from __future__ import annotations

import math

import pytest
import torch

from gan.classifier import EvaluationError, KMNISTClassifier
from gan.data import load_kmnist, to_signed_unit
from gan.metrics import (
    CONDITIONAL_METRICS,
    QUALITY_METRICS,
    Classified,
    Evaluator,
    Report,
    check_labels,
    class_metrics,
    classify,
    compare,
    per_class,
    precision_recall,
    summarise_classes,
)
from gan.samplers import generate, generation_labels


@pytest.fixture(scope="module")
def evaluator(shared_data) -> Evaluator:
    return Evaluator(shared_data, "test", "cpu", kid_subsets=10)  # 10 KID subsets, not 100: a fast suite


@pytest.fixture(scope="module")
def floor(evaluator) -> dict[str, float]:
    return evaluator.real_floor(per_class_metrics=True)  # QUALITY_METRICS and CONDITIONAL_METRICS


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


# --- a class-conditional generator: each class's samples against the real images of that class ----------------


@pytest.fixture(scope="module")
def real_labels(shared_data) -> torch.Tensor:
    return load_kmnist(shared_data, "test", download=False).labels


def real_image_sampler(real_images: torch.Tensor, real_labels: torch.Tensor, follow_labels: bool):
    """A stand-in conditional generator that returns real test images picked by its noise: of the requested class
    (``follow_labels``, a perfect generator), or of any class (one that ignores the label)."""
    pools = [(real_labels == label).nonzero()[:, 0] for label in range(10)]

    def sample(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pick = (z[:, 0].abs() * 1e6).long()  # a different real image for each noise vector
        if not follow_labels:
            return real_images[pick % len(real_images)]
        index = [pools[label][i % len(pools[label])] for label, i in zip(labels.tolist(), pick.tolist(), strict=True)]
        return real_images[torch.stack(index)]

    return sample


@pytest.fixture(scope="module")
def perfect_samples(real_images, real_labels) -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 images and their labels from a perfect conditional generator, through gan.samplers.generate."""
    sampler = real_image_sampler(real_images, real_labels, follow_labels=True)
    return generate(sampler, 8, 2000, seed=0, num_classes=10), generation_labels(2000, 10)


@pytest.fixture(scope="module")
def perfect_report(evaluator, perfect_samples) -> Report:
    return evaluator.report(*perfect_samples)


def test_a_perfect_conditional_generator_scores_like_real_images_of_each_class(perfect_report):
    report = perfect_report
    metrics = report.metrics
    assert set(metrics) == {*QUALITY_METRICS, *CONDITIONAL_METRICS}
    # The classifier's accuracy on real test images (about 0.99: it trained on 90% of them).
    assert metrics["class_accuracy"] > 0.97
    assert [c.label for c in report.classes] == list(range(10)) and {c.samples for c in report.classes} == {200}
    assert {c.real_images for c in report.classes} == {1000}
    assert metrics["class_fid_worst"] == max(c.fid for c in report.classes)
    assert metrics["class_fid_worst_class"] == report.classes[int(metrics["class_fid_worst_class"])].label
    assert metrics["class_fid_mean"] == pytest.approx(sum(c.fid for c in report.classes) / 10)
    assert metrics["class_fid_worst"] < 15  # 200 samples of 64-d features: a bias of a few units above 0
    assert metrics["class_precision_mean"] > 0.7 and metrics["class_recall_mean"] > 0.5


def test_without_labels_the_metrics_are_todays(evaluator, perfect_samples, perfect_report):
    images, _ = perfect_samples
    assert evaluator.evaluate(images) == {name: perfect_report.metrics[name] for name in QUALITY_METRICS}


def test_a_generator_that_ignores_the_label_is_found_out_only_per_class(
    evaluator, real_images, real_labels, perfect_report
):
    sampler = real_image_sampler(real_images, real_labels, follow_labels=False)
    ignoring = evaluator.evaluate(generate(sampler, 8, 2000, num_classes=10), generation_labels(2000, 10))
    perfect = perfect_report.metrics
    assert 0.05 < ignoring["class_accuracy"] < 0.15  # the requested class by chance: 1 in 10
    assert ignoring["class_fid_mean"] > 20 * perfect["class_fid_mean"]
    assert ignoring["class_precision_mean"] < 0.5 * perfect["class_precision_mean"]
    # Both sets are real images of every class: the class-blind metrics cannot tell them apart.
    assert ignoring["fid"] < 3 and perfect["fid"] < 3
    assert ignoring["class_coverage"] > 0.99 and perfect["class_coverage"] > 0.99


def test_the_real_floor_with_classes(floor):
    assert set(floor) == {*QUALITY_METRICS, *CONDITIONAL_METRICS}
    assert floor["class_accuracy"] > 0.97  # the classifier's accuracy on the second half's real images
    assert floor["class_fid_mean"] < floor["class_fid_worst"] < 15


def test_per_class_results_of_hand_made_features():
    # Two classes whose features are points near two centres; the fakes of class 1 sit on class 0's points.
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 4, [10.0] * 4])
    real_labels = torch.arange(400) % 2
    real = torch.randn(400, 4, generator=generator) + centres[real_labels]
    fake_labels = torch.arange(200) % 2
    fake = torch.randn(200, 4, generator=generator) + centres[torch.zeros(200, dtype=torch.long)]
    predicted = torch.zeros(200, dtype=torch.long)  # every fake is classified as class 0
    real_set, fake_set = Classified(real, torch.eye(10)[real_labels]), Classified(fake, torch.eye(10)[predicted])
    classes = per_class(real_set, real_labels, fake_set, fake_labels)
    counts = [(c.label, c.samples, c.real_images, c.accuracy) for c in classes]
    assert counts == [(0, 100, 200, 1.0), (1, 100, 200, 0.0)]
    assert classes[0].fid < 1 < 100 < classes[1].fid  # class 1's samples are 10 units per axis from its reals
    assert classes[1].precision == 0.0 and classes[1].recall == 0.0
    summary = summarise_classes(classes)
    assert summary["class_accuracy"] == 0.5 and summary["class_fid_worst_class"] == 1.0
    assert summary["class_fid_worst"] == classes[1].fid


def test_bad_labels_are_refused_with_a_reason():
    for labels, reason in (
        (torch.zeros(10), "int64 labels"),
        (torch.zeros(9, dtype=torch.long), r"shape \[9\]"),
        (torch.full((10,), 10), "e.g. 10"),
        (torch.tensor([0] * 8 + [1] * 2), r"class 1 \(き\) has 2 samples.*at least 8 samples"),
    ):
        with pytest.raises(EvaluationError, match=reason):
            check_labels(labels, 10, k=3)
