"""``python -m gan.evaluate``: the reference data a run chooses, errors that name this command's flags, the JSON."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import run_command, save_small_run

from gan.artifacts import CONFIG_FILE
from gan.evaluate import FALLBACK_REFERENCE, main, resolve_reference
from gan.metrics import QUALITY_METRICS, Evaluator
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
    sampler, latent_dim, _ = open_generator(run_dir)
    expected = evaluator.evaluate(generate(sampler, latent_dim, 1000, seed=0))
    assert set(payload["metrics"]) == set(QUALITY_METRICS)
    assert payload["metrics"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert payload["real_floor"]["metrics"] == pytest.approx(evaluator.real_floor(), rel=1e-4, abs=1e-6)


@pytest.mark.slow  # a whole evaluation: ~10 s on 2 CPU cores
def test_an_explicit_split_overrides_the_run_config(shared_data, tmp_path, capsys):
    save_small_run(tmp_path, data_dir=str(shared_data), split="train")  # train: not in the shared folder
    out = tmp_path / "eval.json"
    assert main([str(tmp_path), "--split", "test", "--n", "200", "--kid-subsets", "2", "--json", str(out)]) == 0
    assert f"the 'test' split in {shared_data}" in capsys.readouterr().out
    reference = json.loads(out.read_text())["reference"]
    assert (reference["data_dir"], reference["split"], reference["images"]) == (str(shared_data), "test", 10_000)
    assert reference["chosen_by"] == {"data_dir": str(tmp_path / CONFIG_FILE), "split": "--split"}
