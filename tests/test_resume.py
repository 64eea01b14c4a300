"""Resume does what it says: which run ``--resume latest`` means, forks, the settings a resumed run keeps, run
folders that are never stuck, and checkpoints that are never lost (real train_ddp.py processes and real files)."""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import FileCreatingPayload, assert_same_weights, run_command, train_command

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE
from gan.checkpointing import CHECKPOINTS, STATE_JSON, CheckpointError, TrainerState, checkpoint_dirs, save_checkpoint

STEPS = 30
LR = "2e-4"  # not the default rates: a resume that fell back to them would show


def _flags(data_dir, output_dir, run_name, *extra):
    return ["--data-dir", str(data_dir), "--split", "test", "--no-download", "--output-dir", str(output_dir),
            "--run-name", run_name, "--report-to", "none", "--eval-every", "0", "--log-every", "10", *extra]


def _resume(data_dir, output_dir, *extra, processes: int = 1, check: bool = True):
    """A resume as a user types it: data location, output folder, --resume and nothing else unless given."""
    command = train_command("--data-dir", str(data_dir), "--no-download", "--output-dir", str(output_dir),
                            "--report-to", "none", *extra, processes=processes)
    return run_command(command, check=check, timeout=400)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): _digest(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(shared_data, tmp_path_factory) -> Path:
    """A finished 30-step run with checkpoints at steps 10, 20 and 30, trained with --lr 2e-4 --max-steps 30."""
    out = tmp_path_factory.mktemp("resume")
    run_command(train_command(*_flags(shared_data, out, "done", "--max-steps", str(STEPS), "--lr", LR,
                                      "--checkpoint-every", "10", "--keep-checkpoints", "3")), timeout=400)
    return out / "done"


def _interrupted_copy(finished: Path, run_dir: Path, at_step: int = 20) -> Path:
    """``finished`` as it was when killed right after its step ``at_step`` checkpoint."""
    shutil.copytree(finished, run_dir)
    for checkpoint in checkpoint_dirs(run_dir):
        if int(checkpoint.name.split("_")[1]) > at_step:
            shutil.rmtree(checkpoint)
    for name in (GENERATOR_FILE, "generator_trained.safetensors"):
        (run_dir / name).unlink(missing_ok=True)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    config["final_step"] = None
    (run_dir / CONFIG_FILE).write_text(json.dumps(config))
    return run_dir


@pytest.mark.slow
def test_latest_picks_the_interrupted_run_and_keeps_its_settings(finished, shared_data, tmp_path):
    done = shutil.copytree(finished, tmp_path / "done")
    killed = _interrupted_copy(finished, tmp_path / "killed")
    before = _tree_digest(done)
    done.touch()  # an export or evaluation of the finished run must not make it "latest"
    result = _resume(shared_data, tmp_path, "--resume", "latest")  # no --lr, no --max-steps: the run's own
    assert f"chose {killed}" in result.stdout and "the only interrupted run" in result.stdout
    assert _tree_digest(done) == before
    config = json.loads((killed / CONFIG_FILE).read_text())
    assert config["final_step"] == STEPS and config["lr_generator"] == config["lr_discriminator"] == float(LR)
    assert [launch["from_step"] for launch in config["launches"]] == [0, 20]
    assert_same_weights(finished / GENERATOR_FILE, killed / GENERATOR_FILE)  # the run's rates were used


@pytest.mark.slow
def test_latest_refuses_to_guess_between_interrupted_runs(finished, shared_data, tmp_path):
    for name in ("first", "second"):
        _interrupted_copy(finished, tmp_path / name)
    before = {name: _tree_digest(tmp_path / name) for name in ("first", "second")}
    result = _resume(shared_data, tmp_path, "--resume", "latest", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "first" in result.stderr and "second" in result.stderr and "--run-name" in result.stderr
    assert {name: _tree_digest(tmp_path / name) for name in ("first", "second")} == before


@pytest.mark.slow
def test_resume_path_with_another_run_name_forks(finished, shared_data, tmp_path):
    source = shutil.copytree(finished, tmp_path / "done")
    before = _tree_digest(source)
    result = _resume(shared_data, tmp_path, "--resume", str(source / CHECKPOINTS / "step_20"), "--run-name", "fork")
    assert "(a fork)" in result.stdout
    assert _tree_digest(source) == before  # the source run is untouched
    fork = tmp_path / "fork"
    config = json.loads((fork / CONFIG_FILE).read_text())
    assert config["forked_from"] == {"run": str(source), "step": 20} and config["final_step"] == STEPS
    assert_same_weights(finished / GENERATOR_FILE, fork / GENERATOR_FILE)
    # forking again into the same name would overwrite the fork: refused
    again = _resume(shared_data, tmp_path, "--resume", str(source / CHECKPOINTS / "step_20"), "--run-name", "fork",
                    check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.slow
def test_older_checkpoint_in_place_and_differing_defining_flags_are_refused(finished, shared_data, tmp_path):
    run_dir = shutil.copytree(finished, tmp_path / "done")
    before = _tree_digest(run_dir)
    older = _resume(shared_data, tmp_path, "--resume", str(run_dir / CHECKPOINTS / "step_10"), check=False)
    assert older.returncode == 2 and "step_30 is newer" in older.stderr and "--run-name NEW" in older.stderr
    flag = _resume(shared_data, tmp_path, "--resume", "latest", "--run-name", "done", "--lr", "1e-3", "--seed", "0",
                   check=False)
    assert flag.returncode == 2 and "Traceback" not in flag.stderr
    assert "--lr-generator 0.001" in flag.stderr and f"--lr-generator {float(LR)}" in flag.stderr
    assert "--seed" not in flag.stderr  # given, but the run's own value: accepted
    assert _tree_digest(run_dir) == before


@pytest.mark.slow
def test_resume_on_more_processes_synchronizes_batchnorm(finished, shared_data, tmp_path):
    killed = _interrupted_copy(finished, tmp_path / "killed")
    _resume(shared_data, tmp_path, "--resume", "latest", "--run-name", "killed", processes=2)
    config = json.loads((killed / CONFIG_FILE).read_text())
    assert config["sync_bn"] is True and config["world_size"] == 2
    assert [(launch["from_step"], launch["world_size"]) for launch in config["launches"]] == [(0, 1), (20, 2)]
    assert config["final_step"] == STEPS


@pytest.mark.slow
def test_a_run_that_died_before_its_first_checkpoint_is_not_stuck(finished, shared_data, tmp_path):
    early = tmp_path / "early"
    early.mkdir()
    config = json.loads((finished / CONFIG_FILE).read_text())
    (early / CONFIG_FILE).write_text(json.dumps({**config, "final_step": None, "run_name": "early"}))
    resume = _resume(shared_data, tmp_path, "--resume", "latest", "--run-name", "early", check=False)
    assert resume.returncode == 2 and "stopped before its first checkpoint" in resume.stderr
    assert f"--output-dir {tmp_path} --run-name early" in resume.stderr  # the command it suggests ...
    started = run_command(train_command(*_flags(shared_data, tmp_path, "early", "--max-steps", "3")))  # ... works
    assert "starting it afresh" in started.stdout
    assert json.loads((early / CONFIG_FILE).read_text())["final_step"] == 3


@pytest.mark.slow
def test_a_plain_start_never_overwrites_a_run(finished, shared_data, tmp_path):
    run_dir = shutil.copytree(finished, tmp_path / "done")
    before = _tree_digest(run_dir)
    result = run_command(train_command(*_flags(shared_data, tmp_path, "done", "--max-steps", "3")), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--output-dir {tmp_path} --run-name done --resume latest" in result.stderr
    assert _tree_digest(run_dir) == before


@pytest.mark.slow
def test_stale_partial_checkpoints_are_removed(finished, shared_data, tmp_path):
    killed = _interrupted_copy(finished, tmp_path / "killed")
    stale = killed / CHECKPOINTS / ".step_25.partial"
    shutil.copytree(killed / CHECKPOINTS / "step_20", stale)
    result = _resume(shared_data, tmp_path, "--resume", "latest", "--run-name", "killed")
    assert not stale.exists() and "half-written" in result.stdout


@pytest.mark.slow
def test_pickled_payload_in_the_random_states_is_refused(finished, shared_data, tmp_path):
    run_dir = _interrupted_copy(finished, tmp_path / "killed")
    marker = tmp_path / "pwned"
    with open(run_dir / CHECKPOINTS / "step_20" / "random_states_0.pkl", "wb") as f:
        pickle.dump({"random_state": FileCreatingPayload(str(marker))}, f)
    result = _resume(shared_data, tmp_path, "--resume", "latest", "--run-name", "killed", check=False)
    assert result.returncode == 1 and "refused" in result.stderr and "random_states_0.pkl" in result.stderr
    assert not marker.exists()


def test_a_full_disk_while_checkpointing_is_one_clear_error_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    from accelerate import Accelerator

    import gan.checkpointing as checkpointing

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    run_dir = tmp_path / "run"
    good = save_checkpoint(accelerator, run_dir, TrainerState(step=10), {"x": torch.zeros(1)}, {}, keep=3)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))

    monkeypatch.setattr(checkpointing, "save_file", full_disk)
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(accelerator, run_dir, TrainerState(step=20), {"x": torch.zeros(1)}, {}, keep=3)
    message = str(caught.value)
    assert "no space left" in message and "step_10" in message and "--resume latest" in message
    assert checkpoint_dirs(run_dir) == [good] and json.loads((good / STATE_JSON).read_text())["step"] == 10
    assert not [p for p in (run_dir / CHECKPOINTS).iterdir() if p.name.startswith(".")]  # no half-written folder
    del model


@pytest.mark.slow  # accelerate launch of 2 processes
def test_a_setup_error_of_a_multi_process_launch_is_printed_once(finished, shared_data, tmp_path):
    shutil.copytree(finished, tmp_path / "done")
    result = run_command(train_command(*_flags(shared_data, tmp_path, "done"), processes=2), check=False,
                         timeout=300)
    assert result.returncode != 0
    assert result.stderr.count("already holds a run") == 1


@pytest.fixture
def small_disk(tmp_path):
    """A real 10 MB file system: room for one checkpoint of the chapter's model (about 6.4 MB), not two."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_real_full_disk_stops_with_one_line_and_the_earlier_checkpoint_resumes(small_disk, shared_data, tmp_path):
    result = run_command(train_command(*_flags(shared_data, small_disk, "full", "--max-steps", "20",
                                               "--checkpoint-every", "5")), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "no space left" in line]
    assert "step_10" in line and "step_5, is intact" in line
    run_dir = small_disk / "full"
    assert [p.name for p in (run_dir / CHECKPOINTS).iterdir()] == ["step_5"]  # no half-written folder left
    shutil.copytree(run_dir, tmp_path / "full")  # somewhere with room: the intact checkpoint continues the run
    resumed = _resume(shared_data, tmp_path, "--resume", "latest", "--run-name", "full")
    assert "at step 5" in resumed.stdout
    assert json.loads((tmp_path / "full" / CONFIG_FILE).read_text())["final_step"] == 20
