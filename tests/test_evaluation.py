"""The evaluator on cases whose answers are known, the shipped classifier, ONNX vs PyTorch, and the CLI."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_command

from gan.artifacts import GENERATOR_FILE, save_generator, write_json_atomic
from gan.data import load_kmnist, to_signed_unit
from gan.evaluate import main
from gan.evaluation import (
    CLASSIFIER_WEIGHTS,
    METRIC_NAMES,
    ClassifierTraining,
    EvaluationError,
    Evaluator,
    accuracy,
    class_metrics,
    compare,
    generate,
    holdout_split,
    load_classifier,
    open_generator,
    precision_recall,
    record_path,
    save_classifier,
    train_classifier,
)
from gan.export import export_onnx
from gan.models import Generator

LATENT_DIM, BASE_WIDTH = 16, 8  # a small generator: the ONNX export stays quick


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


# --- the shipped classifier ---------------------------------------------------------------------------------


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
    weights = tmp_path / "small.safetensors"
    save_classifier(classifier, weights, {"note": "test"})
    loaded, record = load_classifier(weights)
    assert record["note"] == "test" and record["architecture"]["feature_dim"] == settings.feature_dim
    batch = to_signed_unit(images[:64]).unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), classifier(batch))


# --- the metrics on real images -----------------------------------------------------------------------------


def test_identical_sets_give_zero_distance(evaluator, real_images):
    first = torch.arange(3000)
    real = evaluator.real.subset(first)
    again = evaluator.classify(real_images[first])  # the same images through the classifier again
    torch.testing.assert_close(again.features, real.features)
    rng_before = torch.get_rng_state()
    metrics = compare(real, again, kid_subsets=10)
    assert torch.equal(torch.get_rng_state(), rng_before)  # KID's subsets come from a forked, seeded RNG
    assert set(metrics) == set(METRIC_NAMES)
    assert abs(metrics["fid"]) < 1e-3
    # KID is unbiased: identical sets give 0 up to the noise of drawing different subsets from each.
    assert abs(metrics["kid"]) < 2 * metrics["kid_std"]
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0


def test_one_repeated_image_covers_nothing(evaluator, real_images, floor):
    metrics = evaluator.evaluate(real_images[:1].repeat(2000, 1, 1, 1))
    assert metrics["class_coverage"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["classifier_score"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["recall"] < 0.01
    assert metrics["fid"] > 20 * floor["fid"]


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


def test_bad_images_are_refused_with_a_reason(evaluator):
    with pytest.raises(EvaluationError, match=r"\[N, 1, 28, 28\]"):
        evaluator.evaluate(torch.zeros(10, 28, 28))
    with pytest.raises(EvaluationError, match="NaN"):
        evaluator.evaluate(torch.full((10, 1, 28, 28), float("nan")))


# --- a saved generator: PyTorch run folder, ONNX export, CLI ------------------------------------------------


@pytest.fixture(scope="module")
def saved_generator(tmp_path_factory) -> tuple[Path, Path]:
    """A run folder (config.json + generator.safetensors) and the same generator exported to ONNX."""
    torch.manual_seed(0)
    generator = Generator(LATENT_DIM, BASE_WIDTH)
    # Fresh BatchNorm statistics (mean 0, var 1) leave the output almost flat grey; one pass in train mode
    # with a cumulative average gives eval mode realistic statistics and varied images.
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        generator.train()(torch.randn(512, LATENT_DIM))
        generator.main[-2].weight.mul_(8)  # the last layer's N(0, 0.02) weights alone give tanh inputs ~ 0.1
    generator.eval()
    run_dir = tmp_path_factory.mktemp("run")
    write_json_atomic(run_dir / "config.json", {"latent_dim": LATENT_DIM, "base_width": BASE_WIDTH})
    save_generator(generator, run_dir / GENERATOR_FILE)
    onnx_path = run_dir.parent / "generator.onnx"
    export_onnx(generator, onnx_path, {"latent_dim": str(LATENT_DIM)})
    return run_dir, onnx_path


def test_onnx_and_pytorch_evaluations_agree(evaluator, saved_generator):
    run_dir, onnx_path = saved_generator
    results = {}
    for source in saved_generator:
        sampler, latent_dim, kind = open_generator(source)
        assert latent_dim == LATENT_DIM
        images = generate(sampler, latent_dim, 2000, seed=5, batch_size=700)
        assert images.shape == (2000, 1, 28, 28) and images.std() > 0.1  # varied, not flat grey
        results[kind] = (images, evaluator.evaluate(images))
    torch.testing.assert_close(results["onnx"][0], results["pytorch"][0], atol=1e-4, rtol=0)
    pytorch, onnx_metrics = results["pytorch"][1], results["onnx"][1]
    for name in METRIC_NAMES:
        assert onnx_metrics[name] == pytest.approx(pytorch[name], rel=1e-3, abs=2e-3), name


def test_cli_evaluates_a_run_and_writes_json(shared_data, evaluator, floor, saved_generator, tmp_path):
    run_dir, _ = saved_generator
    out = tmp_path / "eval.json"
    flags = ["--n", "1000", "--kid-subsets", "10", "--data-dir", str(shared_data), "--split", "test"]
    finished = run_command([sys.executable, "-m", "gan.evaluate", str(run_dir), *flags, "--json", str(out)])
    assert "fid" in finished.stdout and "real floor" in finished.stdout
    payload = json.loads(out.read_text())
    assert payload["kind"] == "pytorch" and payload["samples"] == 1000
    assert payload["reference"] == {"data_dir": str(shared_data), "split": "test", "images": 10_000}
    # The same numbers as the library computes in this process.
    sampler, latent_dim, _ = open_generator(run_dir)
    expected = evaluator.evaluate(generate(sampler, latent_dim, 1000, seed=0))
    assert payload["metrics"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert payload["real_floor"]["metrics"] == pytest.approx(floor, rel=1e-4, abs=1e-6)


def test_cli_reports_a_missing_source_as_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "nothing.onnx")]) == 1
    assert "nothing.onnx does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1  # a folder, but no run in it
    assert f"{tmp_path / 'config.json'} does not exist" in capsys.readouterr().err
