"""gan/classifier.py: the shipped classifier against its record, refusing changed weights, training, validation."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch

from gan.classifier import (
    CLASSIFIER_WEIGHTS,
    ClassifierTraining,
    EvaluationError,
    KMNISTClassifier,
    accuracy,
    holdout_split,
    load_classifier,
    record_path,
    save_classifier,
    train_classifier,
)
from gan.data import load_kmnist, to_signed_unit


def test_shipped_classifier_matches_its_record(shared_data):
    classifier, record = load_classifier()
    assert CLASSIFIER_WEIGHTS.stat().st_size < 1_000_000
    assert record["data"] == {"split": "test", "images": 10_000}
    assert record["made_by"].startswith("python -m gan.evaluate train-classifier")
    assert 0.93 <= record["holdout_accuracy"] <= 1.0
    # Re-measure on the recorded held-out part: the weights are the ones the record describes.
    data = load_kmnist(shared_data, "test", download=False)
    settings = record["settings"]
    _, holdout = holdout_split(len(data), settings["holdout_fraction"], settings["seed"])
    assert len(holdout) == record["holdout_images"] == 1000
    measured = accuracy(classifier, data.images[holdout], data.labels[holdout])
    assert measured == pytest.approx(record["holdout_accuracy"], abs=0.002)


def test_shipped_record_names_where_its_code_lives():
    record = json.loads(record_path(CLASSIFIER_WEIGHTS).read_text())
    module_name, class_name = record["architecture"]["class"].rsplit(".", 1)
    assert getattr(importlib.import_module(module_name), class_name) is KMNISTClassifier
    assert "(gan.classifier.holdout_split)" in record["holdout_rule"]


def test_classifier_whose_weights_changed_is_refused(tmp_path):
    weights = tmp_path / "classifier.safetensors"
    shutil.copy(CLASSIFIER_WEIGHTS, weights)
    shutil.copy(record_path(CLASSIFIER_WEIGHTS), record_path(weights))
    load_classifier(weights)  # the untouched copy loads
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match="SHA-256.*train-classifier"):
        load_classifier(weights)
    record_path(weights).unlink()
    with pytest.raises(EvaluationError, match="does not exist"):
        load_classifier(weights)


def test_training_learns_and_saves_a_loadable_record(shared_data, tmp_path):
    data = load_kmnist(shared_data, "test", download=False)
    images, labels = data.images[:2500], data.labels[:2500]
    # A narrow network, a high rate and small batches: quick to train (~0.6 held-out accuracy here, chance 0.1).
    settings = ClassifierTraining(
        epochs=2, holdout_fraction=0.2, seed=3, width=8, feature_dim=16, lr=1e-2, batch_size=64
    )
    epochs_seen = []
    classifier, results = train_classifier(
        images, labels, settings, on_epoch=lambda *values: epochs_seen.append(values)
    )
    assert results["train_images"] == 2000 and results["holdout_images"] == 500
    assert results["holdout_accuracy"] > 0.4
    assert [values[0] for values in epochs_seen] == [1, 2]
    weights = tmp_path / "new" / "small.safetensors"  # a folder that does not exist yet
    save_classifier(classifier, weights, {"note": "test"})
    assert sorted(path.name for path in weights.parent.iterdir()) == ["small.json", "small.safetensors"]  # no .tmp
    loaded, record = load_classifier(weights)
    assert record["note"] == "test" and record["architecture"]["feature_dim"] == settings.feature_dim
    assert record["architecture"]["class"] == "gan.classifier.KMNISTClassifier"
    batch = to_signed_unit(images[:64]).unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), classifier(batch))


def test_training_settings_report_every_problem_by_flag():
    assert ClassifierTraining().problems() == []
    problems = ClassifierTraining(epochs=0, batch_size=-1, width=0, holdout_fraction=1.0, lr=0).problems()
    assert len(problems) == 5
    for flag in ("--epochs", "--batch-size", "--width", "--holdout-fraction", "--lr"):
        assert any(problem.startswith(flag + " ") for problem in problems), flag
