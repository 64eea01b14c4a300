"""The record-keeping rules behind one W&B run per training run and the best checkpoint, in-process and fast: which
steps a resumed launch logs again, which offline folders it supersedes, and which generator is kept as the best.
(tests/test_best_and_artifacts.py checks them end to end on a killed and resumed run.)"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file

from gan.artifacts import generator_path, read_generator_metadata
from gan.checkpointing import TrainerState
from gan.models import Generator
from gan.tracking import SUPERSEDED, Tracker, supersede_offline_runs
from gan.trainer import BestGenerator, SampleRecord, log_history


class RecordingTracker(Tracker):
    """A Tracker that records what it is asked to log instead of logging it."""

    def __init__(self, wandb_run=None, report_to: str = "wandb"):  # no accelerator: nothing is really logged
        self.report_to, self.wandb_run, self.logged = report_to, wandb_run, []

    def log(self, values, step):
        self.logged.append(("row", step, dict(values)))

    def log_image(self, name, image, step, caption=None):
        self.logged.append(("image", step, caption))


def _history(steps: int, grid_every: int) -> tuple[TrainerState, SampleRecord]:
    state = TrainerState(step=steps, history=[{"step": s, "epoch": 0, "d_loss": 1.0 / s} for s in range(1, steps + 1)])
    state.grid_steps = list(range(grid_every, steps + 1, grid_every))
    grids = [torch.full((4, 28, 28), s, dtype=torch.uint8) for s in state.grid_steps]
    return state, SampleRecord(grids=grids)


def test_a_new_or_offline_wandb_run_gets_the_whole_history_again():
    state, samples = _history(12, 5)
    tracker = RecordingTracker(SimpleNamespace(resumed=False, starting_step=0))  # offline, or new to the server
    assert tracker.first_step_missing() == 0
    log_history(tracker, state, samples, since=tracker.first_step_missing())
    rows = [(step, values["d_loss"]) for kind, step, values in tracker.logged if kind == "row"]
    assert rows == [(s, 1.0 / s) for s in range(1, 13)]  # every step once, with the checkpoint's values
    assert [(step, caption) for kind, step, caption in tracker.logged if kind == "image"] == [(5, "step 5"),
                                                                                              (10, "step 10")]
    order = [step for _, step, _ in tracker.logged]
    assert order == sorted(order)  # each grid right after its step's row: W&B steps only go forward


def test_a_resumed_online_run_gets_only_the_steps_the_server_lacks():
    state, samples = _history(12, 5)
    tracker = RecordingTracker(SimpleNamespace(resumed=True, starting_step=9))  # the server holds steps 1..8
    log_history(tracker, state, samples, since=tracker.first_step_missing())
    assert [step for kind, step, _ in tracker.logged if kind == "row"] == [9, 10, 11, 12]
    assert [step for kind, step, _ in tracker.logged if kind == "image"] == [10]


def test_tensorboard_and_no_tracker_get_no_history_again():
    state, samples = _history(3, 1)
    for tracker in (RecordingTracker(None, "tensorboard"), RecordingTracker(None, "none")):
        assert tracker.first_step_missing() == math.inf
        log_history(tracker, state, samples, since=tracker.first_step_missing())
        assert tracker.logged == []


def test_earlier_offline_folders_of_the_same_run_are_moved_aside(tmp_path: Path):
    wandb_dir = tmp_path / "wandb"
    names = ["offline-run-20261201_010000-abc123", "offline-run-20261201_020000-abc123",
             "offline-run-20261201_030000-abc123", "offline-run-20261201_015000-other1", "run-20261201_000000-abc123"]
    for name in names:
        (wandb_dir / name).mkdir(parents=True)
    current = wandb_dir / names[2]
    moved = supersede_offline_runs(wandb_dir, "abc123", current)
    assert [path.name for path in moved] == names[:2]
    assert sorted(p.name for p in (wandb_dir / SUPERSEDED).iterdir()) == names[:2]
    # this launch's folder, another run's and an online run's stay
    assert {p.name for p in wandb_dir.iterdir()} == {SUPERSEDED, *names[2:]}


def _generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(16, 8).eval()


def test_the_best_generator_is_the_lowest_fid_and_ties_keep_the_earlier(tmp_path: Path):
    best = BestGenerator()
    assert best.record() is None and best.tensors() == {}
    assert best.consider(10, {"eval/fid": 50.0, "eval/kid": 3.0, "eval/seconds": 2.0}, _generator(0))
    assert not best.consider(20, {"eval/fid": 50.0, "eval/kid": 1.0, "eval/seconds": 2.0}, _generator(1))  # a tie
    assert not best.consider(30, {"eval/fid": 60.0, "eval/kid": 1.0, "eval/seconds": 2.0}, _generator(2))
    assert best.record() == {"step": 10, "metrics": {"fid": 50.0, "kid": 3.0}}  # no timing among the metrics
    assert best.consider(40, {"eval/fid": 40.0, "eval/kid": 2.0, "eval/seconds": 2.0}, _generator(3))
    assert best.step == 40
    assert all(torch.equal(best.weights[name], value) for name, value in _generator(3).state_dict().items())

    # written as RUN_DIR/best/generator.safetensors with its step and evaluation; restored from a checkpoint as is
    best.write(tmp_path, {"generator_weights": "ema", "num_classes": 0})
    path = generator_path(tmp_path, "best")
    metadata = read_generator_metadata(path)
    assert metadata["step"] == 40 and metadata["metrics"] == {"fid": 40.0, "kid": 2.0}
    assert metadata["weights"] == "ema" and metadata["selected_by"] == "fid" and metadata["run_name"] == tmp_path.name
    again = BestGenerator.from_checkpoint(best.record(), {"fixed_noise": torch.zeros(1), **best.tensors()})
    assert (again.step, again.metrics) == (40, best.metrics)
    saved = load_file(str(path))
    assert saved.keys() == again.weights.keys()
    assert all(np.array_equal(saved[k].numpy(), again.weights[k].numpy()) for k in saved)

    # a checkpoint without a best (no evaluation before it): a best written after it is removed on resume
    BestGenerator.from_checkpoint(None, {}).write(tmp_path, {"generator_weights": "ema", "num_classes": 0})
    assert not path.exists()
