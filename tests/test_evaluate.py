"""``python -m gan.evaluate``: the reference data a run chooses, errors that name this command's flags, the JSON."""

from __future__ import annotations

import json
import re
import sys

import pytest
from helpers import CONDITIONAL_RUN_CONFIG, run_command, save_small_run

from gan.artifacts import CONFIG_FILE, read_config
from gan.data import CLASS_CHARACTERS
from gan.evaluate import FALLBACK_REFERENCE, main, resolve_reference
from gan.export import MODEL_FILE, export_onnx, model_metadata
from gan.metrics import CONDITIONAL_METRICS, QUALITY_METRICS, Evaluator
from gan.samplers import generate, open_generator

FAST = ["--n", "1000", "--kid-subsets", "10"]  # 10 KID subsets, not 100: a fast suite


# --- which real images: flags, else the run's config.json, else the fallbacks --------------------------------


def test_reference_comes_from_the_run_config_unless_a_flag_is_given(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"latent_dim": 4, "data_dir": "/kmnist", "split": "all"}))
    for source in (tmp_path, tmp_path / "generator.onnx"):  # the run folder, or a model exported into it
        reference = resolve_reference(source, None, None)
        assert (reference.data_dir, reference.split) == ("/kmnist", "all")
        assert reference.chosen_by == {"data_dir": str(tmp_path / CONFIG_FILE), "split": str(tmp_path / CONFIG_FILE)}
    reference = resolve_reference(tmp_path, None, "train")
    assert (reference.data_dir, reference.split) == ("/kmnist", "train")
    assert reference.chosen_by["split"] == "--split"
    reference = resolve_reference(tmp_path, "elsewhere", None)
    assert (reference.data_dir, reference.split) == ("elsewhere", "all")


def test_reference_falls_back_without_a_run_config(tmp_path):
    reference = resolve_reference(tmp_path / "model.onnx", None, None)  # no config.json beside it
    assert (reference.data_dir, reference.split) == (FALLBACK_REFERENCE["data_dir"], FALLBACK_REFERENCE["split"])
    assert reference.run_config is None
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"latent_dim": 4}))  # a config without the data fields
    reference = resolve_reference(tmp_path, None, "train")
    assert (reference.data_dir, reference.split) == (FALLBACK_REFERENCE["data_dir"], "train")


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_data_names_this_commands_flags_and_the_run_config(shared_data, tmp_path, capsys):
    # The shared folder lacks the train images: the run's own split cannot be loaded.
    save_small_run(tmp_path, data_dir=str(shared_data), split="train")
    assert main([str(tmp_path), *FAST]) == 1
    captured = capsys.readouterr()
    assert "train-images-idx3-ubyte.gz is missing" in captured.err
    assert str(shared_data / "KMNIST" / "raw") in captured.err  # the run's data_dir, not the fallback
    assert "--no-download" not in captured.err  # gan.evaluate has no such flag
    assert "--data-dir" in captured.err and "--split" in captured.err
    assert str(tmp_path / CONFIG_FILE) in captured.err  # where the defaults came from
    assert "Traceback" not in captured.err


def test_classifier_training_names_only_its_own_flags_for_missing_data(tmp_path, capsys):
    assert main(["train-classifier", "--data-dir", str(tmp_path), "--epochs", "1"]) == 1
    error = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz is missing" in error
    assert "--no-download" not in error and "--data-dir" in error


def test_every_count_below_one_is_reported_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--n", "0", "--k", "0", "--batch-size", "0"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    for flag in ("--n", "--k", "--batch-size"):
        assert f"{flag} must be at least 1, got 0" in error
    assert "--kid-subsets" not in error.split("error:", 1)[1]
    with pytest.raises(SystemExit) as exited:
        main(["train-classifier", "--epochs", "0", "--feature-dim", "0"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--epochs must be at least 1" in error and "--feature-dim must be at least 1" in error


def test_cli_reports_a_missing_source_as_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:  # a bad argument: refused before anything is loaded
        main([str(tmp_path / "nothing.onnx")])
    assert exited.value.code == 2
    assert f"RUN_DIR|MODEL.onnx {tmp_path / 'nothing.onnx'} does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1  # a folder, but no run in it: a damaged run, not a bad argument
    assert f"{tmp_path / CONFIG_FILE} does not exist" in capsys.readouterr().err


# --- whole evaluations --------------------------------------------------------------------------------------


@pytest.mark.slow  # a real process, then the same evaluation in this one: ~30 s on 2 CPU cores
def test_cli_evaluates_a_run_against_its_own_data_and_writes_json(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    save_small_run(run_dir, data_dir=str(shared_data), split="test")
    out = tmp_path / "eval.json"
    finished = run_command([sys.executable, "-m", "gan.evaluate", str(run_dir), *FAST, "--json", str(out)])
    assert f"comparing against the 'test' split in {shared_data}" in finished.stdout
    assert "fid" in finished.stdout and "real floor" in finished.stdout
    payload = json.loads(out.read_text())
    assert payload["kind"] == "pytorch" and payload["samples"] == 1000
    config_file = str(run_dir / CONFIG_FILE)
    assert payload["reference"] == {
        "data_dir": str(shared_data),  # not the fallback 'data': the run's own
        "split": "test",
        "images": 10_000,
        "chosen_by": {"data_dir": config_file, "split": config_file},
    }
    # The same numbers as the library computes in this process.
    evaluator = Evaluator(shared_data, "test", "cpu", kid_subsets=10)
    opened = open_generator(run_dir)
    expected = evaluator.evaluate(generate(opened.sampler, opened.latent_dim, 1000, seed=0))
    assert set(payload["metrics"]) == set(QUALITY_METRICS)
    assert payload["metrics"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert payload["real_floor"]["metrics"] == pytest.approx(evaluator.real_floor(), rel=1e-4, abs=1e-6)


@pytest.mark.slow  # two whole evaluations
def test_weights_best_evaluates_the_runs_best_generator(shared_data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from gan.artifacts import GENERATOR_FILE, generator_path

    save_small_run(tmp_path, data_dir=str(shared_data), split="test")
    flags = ["--n", "200", "--kid-subsets", "2"]
    assert main([str(tmp_path), "--weights", "best", *flags]) == 1  # no best/ yet: one clear line
    assert "best/generator.safetensors does not exist" in capsys.readouterr().err
    best = generator_path(tmp_path, "best")
    best.parent.mkdir()
    weights = load_file(str(tmp_path / GENERATOR_FILE))
    save_file({k: v * 0.5 if k == "main.9.weight" else v for k, v in weights.items()}, str(best))  # another model
    results = {}
    for which in ("final", "best"):
        out = tmp_path / f"{which}.json"
        assert main([str(tmp_path), "--weights", which, *flags, "--json", str(out)]) == 0
        assert f"({which} weights)" in capsys.readouterr().out
        results[which] = json.loads(out.read_text())
        assert results[which]["weights"] == which
    assert results["best"]["metrics"]["fid"] != results["final"]["metrics"]["fid"]  # each measured its own model


def test_weights_best_of_an_onnx_model_is_refused(tmp_path, capsys):
    model = tmp_path / "generator.onnx"
    model.write_bytes(b"onnx")
    with pytest.raises(SystemExit) as exited:
        main([str(model), "--weights", "best"])
    assert exited.value.code == 2 and "--weights chooses among a run folder's generators" in capsys.readouterr().err


@pytest.mark.slow  # a whole evaluation: ~10 s on 2 CPU cores
def test_an_explicit_split_overrides_the_run_config(shared_data, tmp_path, capsys):
    save_small_run(tmp_path, data_dir=str(shared_data), split="train")  # train: not in the shared folder
    out = tmp_path / "eval.json"
    assert main([str(tmp_path), "--split", "test", "--n", "200", "--kid-subsets", "2", "--json", str(out)]) == 0
    assert f"the 'test' split in {shared_data}" in capsys.readouterr().out
    reference = json.loads(out.read_text())["reference"]
    assert (reference["data_dir"], reference["split"], reference["images"]) == (str(shared_data), "test", 10_000)
    assert reference["chosen_by"] == {"data_dir": str(tmp_path / CONFIG_FILE), "split": "--split"}


# --- a class-conditional generator: found from the run's config.json or the ONNX model, measured per class -------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, shared_data):
    """A run folder of a small 10-class generator (trained, says its config.json, on the shared test split) and,
    in it, the same generator exported to ONNX."""
    run_dir = tmp_path_factory.mktemp("conditional-run")
    generator = save_small_run(run_dir, **{**CONDITIONAL_RUN_CONFIG, "data_dir": str(shared_data)})
    export_onnx(generator, run_dir / MODEL_FILE, model_metadata(read_config(run_dir), "fp32"))
    return run_dir, run_dir / MODEL_FILE


def test_cli_reports_the_per_class_metrics_of_a_conditional_run(conditional_run, tmp_path, capsys):
    run_dir, _ = conditional_run
    out = tmp_path / "eval.json"
    assert main([str(run_dir), "--n", "500", "--kid-subsets", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "conditional on 10 classes" in printed
    for name in CONDITIONAL_METRICS:
        assert name in printed
    for label, character in enumerate(CLASS_CHARACTERS):  # one row per class: "3 つ       50  0.1200 ..."
        assert re.search(rf"^{label} {character} +50 ", printed, re.MULTILINE)
    payload = json.loads(out.read_text())
    assert payload["num_classes"] == 10 and payload["kind"] == "pytorch"
    assert set(payload["metrics"]) == {*QUALITY_METRICS, *CONDITIONAL_METRICS}
    assert set(payload["real_floor"]["metrics"]) == {*QUALITY_METRICS, *CONDITIONAL_METRICS}
    assert payload["real_floor"]["metrics"]["class_accuracy"] > 0.97
    classes = payload["classes"]
    assert [(c["label"], c["character"], c["samples"]) for c in classes] == [
        (label, character, 50) for label, character in enumerate(CLASS_CHARACTERS)
    ]
    accuracy = sum(c["accuracy"] for c in classes) / 10  # 50 samples of each class
    assert payload["metrics"]["class_accuracy"] == pytest.approx(accuracy)
    worst = max(classes, key=lambda c: c["fid"])
    assert payload["metrics"]["class_fid_worst_class"] == worst["label"]
    assert f"{worst['label']} {worst['character']}" in printed.split("class_fid_worst_class", 1)[1].splitlines()[0]


@pytest.mark.slow  # two whole evaluations: ~20 s on 2 CPU cores
def test_a_conditional_onnx_model_scores_as_its_run_folder(conditional_run, tmp_path):
    payloads = {}
    for source in conditional_run:
        out = tmp_path / f"{source.name}.json"
        assert main([str(source), "--n", "500", "--kid-subsets", "2", "--json", str(out)]) == 0
        payloads[source.suffix] = json.loads(out.read_text())
    onnx, pytorch = payloads[".onnx"], payloads[""]
    assert onnx["kind"] == "onnx" and onnx["num_classes"] == 10
    assert onnx["metrics"] == pytest.approx(pytorch["metrics"], rel=1e-3, abs=1e-4)
    assert [c["fid"] for c in onnx["classes"]] == pytest.approx([c["fid"] for c in pytorch["classes"]], rel=1e-3)


def test_too_few_samples_for_every_class_is_refused_before_loading_the_reference(conditional_run, capsys):
    run_dir, _ = conditional_run
    with pytest.raises(SystemExit) as exited:
        main([str(run_dir), "--n", "39", "--data-dir", "/nonexistent"])  # the data would fail later
    assert exited.value.code == 2
    assert "--n must be at least 40 for a generator conditional on 10 classes" in capsys.readouterr().err
