"""gan/card.py: the model card of an exported run, read back with huggingface_hub as the Hub reads it (no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import FINAL_STEP, copy_run, exported_small_run, nan_onnx_model, write_evaluation
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from PIL import Image
from safetensors.torch import load_file, save_file

from gan.artifacts import EVALUATION_FILE
from gan.card import (
    CARD_FILE,
    CONDITIONAL_TAG,
    SAMPLE_SCALE,
    SAMPLES_FILE,
    TAGS,
    build_card,
    main,
    write_card,
)
from gan.data import CLASS_CHARACTERS
from gan.export import REPORT_FILE
from gan.noise import grid_inputs
from gan.onnx_generator import OnnxGenerator, to_uint8
from gan.pictures import grid_image

REPO_ID = "alice/kmnist-dcgan"

@pytest.fixture(scope="module")
def unconditional_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_small_run(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def conditional_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_small_run(tmp_path_factory, 10)


@pytest.fixture
def unconditional(unconditional_source: Path, tmp_path: Path) -> Path:
    return copy_run(unconditional_source, tmp_path / "run")


@pytest.fixture
def conditional(conditional_source: Path, tmp_path: Path) -> Path:
    return copy_run(conditional_source, tmp_path / "run")


def results_by_metric(card: ModelCard) -> dict[str, object]:
    return {result.metric_type: result for result in card.data.eval_results}


def shown_image(run_dir: Path, text: str) -> np.ndarray:
    """The image the card's markdown shows, read from the path it gives (relative to the card)."""
    (path,) = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert not Path(path).is_absolute()
    return np.asarray(Image.open(run_dir / path))


def test_card_front_matter_loads_back_with_the_evaluation_numbers(unconditional: Path) -> None:
    evaluation = write_evaluation(unconditional)
    path = write_card(unconditional, REPO_ID)
    assert path == unconditional / CARD_FILE

    card = ModelCard.load(path)  # a local path: read from disk, as the Hub reads README.md
    data = card.data
    assert data.library_name == "onnx" and data.license == "mit" and data.datasets == ["kmnist"]
    assert data.tags == TAGS and CONDITIONAL_TAG not in data.tags
    assert data.pipeline_tag == "unconditional-image-generation"
    results = results_by_metric(card)
    assert list(results) == ["fid", "kid", "coverage", "precision", "recall"]
    metrics = evaluation["metrics"]
    for metric_type, key in [("fid", "fid"), ("kid", "kid"), ("coverage", "class_coverage"),
                             ("precision", "precision"), ("recall", "recall")]:
        result = results[metric_type]
        assert result.metric_value == metrics[key]
        assert (result.task_type, result.dataset_name, result.dataset_type, result.dataset_split) == (
            "unconditional-image-generation", "Kuzushiji-MNIST", "kmnist", "test")
        assert result.metric_args == {"samples": 2000, "seed": 0}

    # The YAML as any other reader gets it, and ModelCardData's own checks (model-index parsing, eval results need a
    # model name) without ignore_metadata_errors: what card.validate() would send to the Hub (it needs the network).
    raw = metadata_load(path)
    (index,) = raw["model-index"]
    assert index["name"] == "kmnist-dcgan"
    (result,) = index["results"]  # one task on one dataset, five metrics
    assert result["dataset"] == {"name": "Kuzushiji-MNIST", "type": "kmnist", "split": "test"}
    assert [metric["value"] for metric in result["metrics"]] == [41.5, 12.25, 0.953, 0.625, 0.4375]
    again = ModelCardData(**raw, ignore_metadata_errors=False)
    assert again.eval_results == data.eval_results and again.to_dict() == data.to_dict()
    assert "2000 samples" in card.text and "real vs real" in card.text


def test_card_body_names_the_interface_and_usage_and_shows_the_onnx_samples(unconditional: Path) -> None:
    card = build_card(unconditional, REPO_ID)
    text = card.text
    assert "| input | `z` | float32 | [batch, 16] |" in text
    assert "| output | `images` | float32 | [batch, 1, 28, 28] |" in text
    assert "`labels`" not in text
    assert f'OnnxGenerator.from_pretrained("{REPO_ID}")' in text
    assert f'hf_hub_download("{REPO_ID}", "generator.onnx")' in text
    assert "examples/node" in text and "node generate.mjs" in text and "examples/web/serve.py" in text
    assert "generator.fp16.onnx" in text  # the fixture was exported with --fp16
    assert f"step {FINAL_STEP}" in text and "the trained weights (no EMA)" in text
    for row in ("| processes (world size) | 2 |", "| mixed precision | bf16 |", "| global batch size | 64 |",
                "| epochs | 3 |", "| learning rate (generator / discriminator) | 0.0002 / 0.0001 |",
                f"| steps | {FINAL_STEP} |", "| classes | 0 (unconditional) |"):
        assert row in text
    assert "max abs diff" in text  # export.py's verification, from export_report.json
    assert "CC BY-SA 4.0" in text and "arXiv:1812.01718" in text  # the data's license and citation

    # The picture: the ONNX model's 64 images of seed 0, 8x8, each pixel shown SAMPLE_SCALE times
    generator = OnnxGenerator(unconditional / "generator.onnx")
    expected = np.kron(grid_image(generator.generate(64, seed=0)), np.ones((SAMPLE_SCALE, SAMPLE_SCALE), np.uint8))
    np.testing.assert_array_equal(shown_image(unconditional, text), expected)
    assert expected.shape == (SAMPLE_SCALE * (8 * 30 + 2),) * 2


def test_card_without_an_evaluation_says_how_to_make_one(unconditional: Path) -> None:
    card = ModelCard.load(write_card(unconditional))
    assert card.data.eval_results is None and card.data.model_name is None
    assert "model-index" not in metadata_load(unconditional / CARD_FILE)
    assert "Not evaluated yet" in card.text and "`python -m gan.evaluate RUN_DIR`" in card.text
    assert 'OnnxGenerator.from_pretrained("USER/NAME")' in card.text  # no repo id yet: a placeholder


def test_conditional_card_has_its_labels_classes_and_class_accuracy(conditional: Path) -> None:
    evaluation = write_evaluation(conditional, conditional=True)
    card = ModelCard.load(write_card(conditional, REPO_ID))
    assert card.data.tags == [*TAGS, CONDITIONAL_TAG]
    results = results_by_metric(card)
    assert list(results) == ["fid", "kid", "coverage", "precision", "recall", "accuracy"]
    assert results["accuracy"].metric_value == evaluation["metrics"]["class_accuracy"] == 0.875
    assert {result.task_type for result in results.values()} == {"image-generation"}
    text = card.text
    assert "| input | `labels` | int64 | [batch] |" in text and "class-conditional" in text
    assert "3 つ (tsu)" in text and 'labels="つ"' in text and "--label つ" in text
    assert "| classes | 10 |" in text
    assert "| class loss weight / mismatch loss weight / conditional BatchNorm | 0.1 / 1.0 / on |" in text

    # One row per class, 8 images each: the images of the run's samples_final.png for seed 0
    generator = OnnxGenerator(conditional / "generator.onnx")
    z, labels = grid_inputs(0, "samples", generator.latent_dim, 10)
    assert labels.tolist() == [c for c in range(10) for _ in range(8)]
    images = to_uint8(generator.generate_raw(z, labels))[:, 0]
    expected = np.kron(grid_image(images), np.ones((SAMPLE_SCALE, SAMPLE_SCALE), np.uint8))
    np.testing.assert_array_equal(shown_image(conditional, text), expected)
    assert expected.shape[0] == SAMPLE_SCALE * (len(CLASS_CHARACTERS) * 30 + 2)


def test_card_of_best_weights_gives_their_step_and_fid(unconditional: Path) -> None:
    report = json.loads((unconditional / REPORT_FILE).read_text())
    (unconditional / REPORT_FILE).write_text(json.dumps({**report, "weights": "best"}))
    assert "`best/generator.safetensors` is not in the run folder" in build_card(unconditional).text

    best = unconditional / "best" / "generator.safetensors"
    best.parent.mkdir()
    save_file(load_file(str(unconditional / "generator.safetensors")), str(best),
              metadata={"step": "5", "metrics": json.dumps({"fid": 33.3, "kid": 2.0})})
    text = build_card(unconditional).text
    assert "## Exported weights: best" in text
    assert "step 5, FID 33.30 in the in-training evaluation" in text and f"trained to step {FINAL_STEP}" in text

    # an evaluation of the final weights does not describe the exported best ones: not in the metadata, and said
    evaluation = write_evaluation(unconditional)
    card = build_card(unconditional)
    assert not card.data.eval_results and "measured the run's final weights, not the exported best ones" in card.text
    assert "python -m gan.evaluate RUN_DIR --weights best" in card.text
    (unconditional / EVALUATION_FILE).write_text(json.dumps({**evaluation, "weights": "best"}))
    card = build_card(unconditional)
    assert card.data.eval_results and card.data.eval_results[0].metric_value == evaluation["metrics"]["fid"]


def test_cli_writes_the_card_and_names_the_repo(unconditional: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(unconditional), "--hub-model-id", REPO_ID]) == 0
    assert f"wrote {unconditional / CARD_FILE}" in capsys.readouterr().out
    assert f'from_pretrained("{REPO_ID}")' in (unconditional / CARD_FILE).read_text(encoding="utf-8")
    assert (unconditional / SAMPLES_FILE).is_file()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("generator.onnx", "the run is not exported. Export it first: python export.py"),
        (EVALUATION_FILE, "evaluation.json is not valid JSON"),
        ("config.json", "config.json is not valid JSON"),
    ],
)
def test_cli_refuses_a_run_it_cannot_describe_in_one_line(
    unconditional: Path, capsys: pytest.CaptureFixture, damage: str, expected: str
) -> None:
    if damage == "generator.onnx":
        (unconditional / damage).unlink()
    else:
        (unconditional / damage).write_text("{not json")
    assert main([str(unconditional)]) == 1
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1
    assert not (unconditional / CARD_FILE).exists()


def test_cli_refuses_a_model_that_draws_nan(unconditional: Path, capsys: pytest.CaptureFixture) -> None:
    model = unconditional / "generator.onnx"
    nan_onnx_model(model, model)  # what an export of a diverged run computes with
    assert main([str(unconditional)]) == 1
    error = capsys.readouterr().err
    assert "produced NaN/inf" in error and error.count("\n") == 1
    assert not (unconditional / SAMPLES_FILE).exists() and not (unconditional / CARD_FILE).exists()


@pytest.mark.parametrize("flags", [["--hub-model-id", "just-a-name"], ["--hub-model-id", "a/b/c"], []])
def test_cli_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str]) -> None:
    run_dir = tmp_path if flags else tmp_path / "missing"
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), *flags])
    assert exit_info.value.code == 2
    assert ("USER/NAME" if flags else "is not a folder") in capsys.readouterr().err
