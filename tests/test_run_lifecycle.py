"""Tracking, pictures, EMA, checkpoints, exact resume and preemption, all with real processes and files."""

from __future__ import annotations

import csv
import hashlib
import json
import math
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
from helpers import ROOT, FileCreatingPayload, assert_same_weights, run_command, train_command
from PIL import Image
from safetensors.torch import load_file
from wandb_reader import config_values, history_rows, read_records

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, TRAINED_GENERATOR_FILE, load_generator
from gan.checkpointing import CHECKPOINTS
from gan.data import to_uint8
from gan.noise import GRID_SIZE, latent_noise
from gan.pictures import LOSSES, METRICS_CSV, REAL_SAMPLES, SAMPLES_FINAL, SAMPLES_OVER_TIME, tile

# Every test that trains (the `finished_run` fixture included) is in the slow tier: each is a real train_ddp.py run.
STEPS = 30
SAMPLE_EVERY = 5
PER_STEP_KEYS = {"d_loss", "g_loss", "d_real", "d_fake", "images_per_second", "lr_generator", "lr_discriminator",
                 "skipped_steps"}


def _flags(data_dir, output_dir, run_name, *extra):
    return ["--data-dir", str(data_dir), "--split", "test", "--no-download", "--output-dir", str(output_dir),
            "--run-name", run_name, "--max-steps", str(STEPS), "--sample-every", str(SAMPLE_EVERY),
            "--checkpoint-every", "10", "--keep-checkpoints", "2", "--log-every", "1", "--eval-every", "0", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


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


@pytest.mark.slow
def test_wandb_offline_fallback_and_history_read_back(finished_run):
    run_dir, result = finished_run
    assert "logging offline" in result.stdout and "wandb sync" in result.stdout
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_records(files[0])
    rows = [row for row in history_rows(records) if "d_loss" in row]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))  # one row per step
    assert all(PER_STEP_KEYS <= row.keys() for row in rows)
    # one fixed-noise grid per --sample-every steps, each an image file W&B wrote next to the log
    grids = [row for row in history_rows(records) if "samples/fixed_noise/_type" in row]
    assert [row["step"] for row in grids] == list(range(SAMPLE_EVERY, STEPS + 1, SAMPLE_EVERY))
    generator, config = load_generator(run_dir)
    noise = torch.from_numpy(latent_noise(config["seed"], "grid", GRID_SIZE, config["latent_dim"]))
    with torch.no_grad():
        final_grid = tile(to_uint8(generator(noise))[:, 0].numpy(), columns=math.isqrt(GRID_SIZE))  # 8x8
    for row in grids:
        grid = {key.removeprefix("samples/fixed_noise/"): value for key, value in row.items()
                if key.startswith("samples/fixed_noise/")}
        assert grid["_type"] == "image-file" and grid["caption"] == f"step {row['step']}"
        path = files[0].parent / "files" / grid["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == grid["sha256"]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.shape == (grid["height"], grid["width"]) == final_grid.shape
    assert len({row["samples/fixed_noise/sha256"] for row in grids}) == len(grids)  # training changed the images
    assert np.abs(pixels.astype(int) - final_grid.astype(int)).max() <= 1  # the last one: the saved generator's
    (last,) = [row for row in history_rows(records) if "pictures/samples_over_time/_type" in row]
    assert last["step"] == STEPS and last["pictures/samples_over_time/_type"] == "image-file"
    assert any("eval/fid" in row for row in history_rows(records))
    logged, saved = config_values(records), json.loads((run_dir / CONFIG_FILE).read_text())
    assert logged["world_size"] == 1 and "versions/torch" in logged
    assert all(logged[key] == saved[key] for key in ("batch_size", "lr_generator", "seed", "max_steps", "run_name"))


@pytest.mark.slow
def test_pictures_metrics_and_config(finished_run):
    run_dir, _ = finished_run
    for name in (REAL_SAMPLES, SAMPLES_OVER_TIME, SAMPLES_FINAL, LOSSES):
        with Image.open(run_dir / name) as image:
            assert image.size[0] >= 400 and image.size[1] >= 300
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # not a blank canvas
    with open(run_dir / METRICS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == STEPS and PER_STEP_KEYS <= rows[0].keys()
    # sample quality is evaluated each epoch and at the end (the run is shorter than an epoch): the last row
    assert rows[-1]["eval/fid"] and float(rows[-1]["eval/fid"]) > 0 and not rows[0]["eval/fid"]
    assert 0 <= float(rows[-1]["eval/class_coverage"]) <= 1
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    assert config["generator_weights"] == "ema" and config["final_step"] == STEPS
    # EMA and trained weights are both kept, and differ
    ema, trained = _weights(run_dir / GENERATOR_FILE), _weights(run_dir / TRAINED_GENERATOR_FILE)
    assert not torch.equal(ema["main.0.weight"], trained["main.0.weight"])
    # checkpoints: pruned to the newest 2, no half-written folder
    names = sorted(p.name for p in (run_dir / CHECKPOINTS).iterdir())
    assert names == ["step_20", "step_30"]


@pytest.mark.slow
def test_same_seed_same_generator(finished_run, shared_data, tmp_path):
    run_command(train_command(*_flags(shared_data, tmp_path, "again", "--report-to", "none")))
    assert_same_weights(finished_run[0] / GENERATOR_FILE, tmp_path / "again" / GENERATOR_FILE)


@pytest.mark.slow
def test_sigkill_then_resume_is_exact(finished_run, shared_data, tmp_path):
    process = _start(shared_data, tmp_path, "killed")
    _wait_for(lambda: (tmp_path / "killed" / CHECKPOINTS / "step_10").is_dir())
    process.kill()
    process.wait(timeout=30)
    assert not (tmp_path / "killed" / GENERATOR_FILE).exists()
    result = run_command(train_command(*_flags(shared_data, tmp_path, "killed", "--report-to", "none",
                                               "--resume", "latest")))
    assert "resumed from" in result.stdout
    assert_same_weights(finished_run[0] / GENERATOR_FILE, tmp_path / "killed" / GENERATOR_FILE)
    with open(tmp_path / "killed" / METRICS_CSV) as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_promptly(finished_run, shared_data, tmp_path):
    process = _start(shared_data, tmp_path, "preempted", "--checkpoint-every", "1000")
    for line in process.stdout:
        if line.startswith("step 12/"):
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)  # generous: a loaded machine; the run itself would go on
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert f"--output-dir {tmp_path} --run-name preempted --resume latest" in stderr  # the complete command
    # promptly: it checkpointed a step at or after the signal and stopped there, well before the end of the run
    checkpoints = list((tmp_path / "preempted" / CHECKPOINTS).glob("step_*"))
    assert len(checkpoints) == 1 and 12 <= int(checkpoints[0].name.split("_")[1]) < STEPS
    assert not (tmp_path / "preempted" / GENERATOR_FILE).exists()
    run_command(train_command(*_flags(shared_data, tmp_path, "preempted", "--report-to", "none",
                                      "--resume", "latest")))
    assert_same_weights(finished_run[0] / GENERATOR_FILE, tmp_path / "preempted" / GENERATOR_FILE)


@pytest.mark.slow
def test_pickled_payload_is_refused(finished_run, shared_data, tmp_path):
    run_dir = tmp_path / "reference"
    shutil.copytree(finished_run[0], run_dir)
    marker = tmp_path / "pwned"
    with open(run_dir / CHECKPOINTS / "step_30" / "optimizer.bin", "wb") as f:
        pickle.dump({"state": FileCreatingPayload(str(marker))}, f)
    result = run_command(train_command(*_flags(shared_data, tmp_path, "reference", "--report-to", "none",
                                               "--resume", str(run_dir / CHECKPOINTS / "step_30"))), check=False)
    assert result.returncode == 1
    assert "refused" in result.stderr and "step_30" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_previous(finished_run, shared_data, tmp_path):
    run_dir = tmp_path / "reference"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / GENERATOR_FILE).unlink()
    model = run_dir / CHECKPOINTS / "step_30" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])  # truncated
    result = run_command(train_command(*_flags(shared_data, tmp_path, "reference", "--report-to", "none",
                                               "--resume", "latest")))
    assert "step_30 is damaged" in result.stderr
    assert "resumed from" in result.stdout and "step_20" in result.stdout
    assert_same_weights(finished_run[0] / GENERATOR_FILE, run_dir / GENERATOR_FILE)


@pytest.mark.slow
def test_non_finite_loss_stops_without_checkpoint(shared_data, tmp_path):
    result = run_command(train_command(*_flags(shared_data, tmp_path, "nan", "--report-to", "none",
                                               "--lr", "1e30")), check=False)
    assert result.returncode == 1
    assert "non-finite at step 1" in result.stderr
    assert not (tmp_path / "nan" / CHECKPOINTS).exists() or not any((tmp_path / "nan" / CHECKPOINTS).iterdir())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = run_command([sys.executable, "train_ddp.py", "--resume", "latest", "--output-dir", str(tmp_path)],
                         check=False)
    assert result.returncode == 2 and "has a checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_tensorboard_tracker_writes_scalars_and_images(shared_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_command(train_command(*_flags(shared_data, tmp_path, "tb", "--report-to", "tensorboard",
                                      "--max-steps", "12")))
    events = EventAccumulator(str(tmp_path / "tb" / "kmnist-gan"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert PER_STEP_KEYS <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("d_loss")] == list(range(1, 13))
    assert {"samples/fixed_noise", "pictures/losses", "pictures/samples_over_time"} <= set(events.Tags()["images"])
