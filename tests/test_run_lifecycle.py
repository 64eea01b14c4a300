"""Tracking, pictures, EMA, checkpoints, exact resume and preemption, all with real processes and files."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_command, train_command
from safetensors.torch import load_file
from wandb_reader import config_values, history_rows, read_records

STEPS = 30
PER_STEP_KEYS = {"d_loss", "g_loss", "d_real", "d_fake", "images_per_second", "lr_generator", "lr_discriminator",
                 "skipped_steps"}


def _flags(data_dir, output_dir, run_name, *extra):
    return ["--data-dir", str(data_dir), "--split", "test", "--no-download", "--output-dir", str(output_dir),
            "--run-name", run_name, "--max-steps", str(STEPS), "--sample-every", "5", "--checkpoint-every", "10",
            "--keep-checkpoints", "2", "--log-every", "1", "--eval-every", "0", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), f"{key} differs between {a} and {b}"


@pytest.fixture(scope="module")
def finished_run(shared_data, tmp_path_factory):
    """An uninterrupted 30-step run with default tracking (W&B, offline here) and EMA."""
    out = tmp_path_factory.mktemp("lifecycle")
    env = {"WANDB_API_KEY": None, "WANDB_MODE": None, "HOME": str(out)}  # not logged in: must fall back to offline
    result = run_command(train_command(*_flags(shared_data, out, "reference", "--eval-every", str(STEPS))), env=env)
    return out / "reference", result


def _start(shared_data, out, name, *extra) -> subprocess.Popen:
    return subprocess.Popen(train_command(*_flags(shared_data, out, name, "--report-to", "none", *extra)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_wandb_offline_fallback_and_history_read_back(finished_run):
    run_dir, result = finished_run
    assert "logging offline" in result.stdout and "wandb sync" in result.stdout
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_records(files[0])
    rows = [row for row in history_rows(records) if "d_loss" in row]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))  # one row per step
    assert all(PER_STEP_KEYS <= row.keys() for row in rows)
    image_keys = {key for row in history_rows(records) for key in row if key.startswith("samples/fixed_noise")}
    assert "samples/fixed_noise/path" in image_keys or any(k.startswith("samples/fixed_noise") for k in image_keys)
    assert any(key.startswith("pictures/samples_over_time") for row in history_rows(records) for key in row)
    assert any("eval/fid" in row for row in history_rows(records))
    config = config_values(records)
    assert config["world_size"] == 1 and config["batch_size"] == 128 and "versions/torch" in config


def test_pictures_metrics_and_config(finished_run):
    run_dir, _ = finished_run
    from PIL import Image

    for name in ("real_samples.png", "samples_over_time.png", "samples_final.png", "losses.png"):
        with Image.open(run_dir / name) as image:
            assert image.size[0] >= 400 and image.size[1] >= 300
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # not a blank canvas
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == STEPS and PER_STEP_KEYS <= rows[0].keys()
    # sample quality is evaluated each epoch and at the end (the run is shorter than an epoch): the last row
    assert rows[-1]["eval/fid"] and float(rows[-1]["eval/fid"]) > 0 and not rows[0]["eval/fid"]
    assert 0 <= float(rows[-1]["eval/class_coverage"]) <= 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["generator_weights"] == "ema" and config["final_step"] == STEPS
    # EMA and trained weights are both kept, and differ
    ema, trained = _weights(run_dir / "generator.safetensors"), _weights(run_dir / "generator_trained.safetensors")
    assert not torch.equal(ema["main.0.weight"], trained["main.0.weight"])
    # checkpoints: pruned to the newest 2, no half-written folder
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step_20", "step_30"]


def test_same_seed_same_generator(finished_run, shared_data, tmp_path):
    run_command(train_command(*_flags(shared_data, tmp_path, "again", "--report-to", "none")))
    _assert_same_weights(finished_run[0] / "generator.safetensors", tmp_path / "again" / "generator.safetensors")


def test_sigkill_then_resume_is_exact(finished_run, shared_data, tmp_path):
    process = _start(shared_data, tmp_path, "killed")
    _wait_for(lambda: (tmp_path / "killed" / "checkpoints" / "step_10").is_dir())
    process.kill()
    process.wait(timeout=30)
    assert not (tmp_path / "killed" / "generator.safetensors").exists()
    result = run_command(train_command(*_flags(shared_data, tmp_path, "killed", "--report-to", "none",
                                               "--resume", "latest")))
    assert "resumed from" in result.stdout
    _assert_same_weights(finished_run[0] / "generator.safetensors", tmp_path / "killed" / "generator.safetensors")
    with open(tmp_path / "killed" / "metrics.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, STEPS + 1))


def test_sigterm_checkpoints_and_exits_promptly(finished_run, shared_data, tmp_path):
    process = _start(shared_data, tmp_path, "preempted", "--checkpoint-every", "1000")
    for line in process.stdout:
        if line.startswith("step 12/"):
            break
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 30
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "--resume latest" in stderr
    checkpoints = list((tmp_path / "preempted" / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1 and int(checkpoints[0].name.split("_")[1]) >= 12
    run_command(train_command(*_flags(shared_data, tmp_path, "preempted", "--report-to", "none",
                                      "--resume", "latest")))
    _assert_same_weights(finished_run[0] / "generator.safetensors", tmp_path / "preempted" / "generator.safetensors")


class _Payload:
    """Unpickling this would create a file: proof that the loader ran foreign code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_pickled_payload_is_refused(finished_run, shared_data, tmp_path):
    run_dir = tmp_path / "reference"
    shutil.copytree(finished_run[0], run_dir)
    marker = tmp_path / "pwned"
    with open(run_dir / "checkpoints" / "step_20" / "optimizer.bin", "wb") as f:
        pickle.dump({"state": _Payload(str(marker))}, f)
    result = run_command(train_command(*_flags(shared_data, tmp_path, "reference", "--report-to", "none",
                                               "--resume", str(run_dir / "checkpoints" / "step_20"))), check=False)
    assert result.returncode == 1
    assert "refused" in result.stderr and "step_20" in result.stderr
    assert not marker.exists()


def test_damaged_latest_checkpoint_falls_back_to_previous(finished_run, shared_data, tmp_path):
    run_dir = tmp_path / "reference"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "generator.safetensors").unlink()
    model = run_dir / "checkpoints" / "step_30" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])  # truncated
    result = run_command(train_command(*_flags(shared_data, tmp_path, "reference", "--report-to", "none",
                                               "--resume", "latest")))
    assert "step_30 is damaged" in result.stderr
    assert "resumed from" in result.stdout and "step_20" in result.stdout
    _assert_same_weights(finished_run[0] / "generator.safetensors", run_dir / "generator.safetensors")


def test_non_finite_loss_stops_without_checkpoint(shared_data, tmp_path):
    result = run_command(train_command(*_flags(shared_data, tmp_path, "nan", "--report-to", "none",
                                               "--lr", "1e30")), check=False)
    assert result.returncode == 1
    assert "non-finite at step 1" in result.stderr
    assert not (tmp_path / "nan" / "checkpoints").exists() or not any((tmp_path / "nan" / "checkpoints").iterdir())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = run_command([sys.executable, "train_ddp.py", "--resume", "latest", "--output-dir", str(tmp_path)],
                         check=False)
    assert result.returncode == 2 and "no checkpoint under" in result.stderr


def test_tensorboard_tracker_writes_scalars_and_images(shared_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_command(train_command(*_flags(shared_data, tmp_path, "tb", "--report-to", "tensorboard",
                                      "--max-steps", "12")))
    events = EventAccumulator(str(tmp_path / "tb" / "kmnist-gan"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert PER_STEP_KEYS <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("d_loss")] == list(range(1, 13))
    assert {"samples/fixed_noise", "pictures/losses", "pictures/samples_over_time"} <= set(events.Tags()["images"])
