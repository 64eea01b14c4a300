"""The steady-state training step never waits for the device: nothing is read back to the host between sync points.

On a GPU every read of a device value (``.item()``, ``.cpu()``, ``.tolist()``, ``bool(t)``, a blocking copy) stalls
the host until the device has caught up. On the CPU those reads cost nothing, but they are the same Python calls,
so counting them in a real CPU run finds every one the GPU would pay for.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from helpers import SHARED_DATA

import gan.trainer
from gan.config import TrainConfig

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
LOG_EVERY = 5
STEPS = 15


@pytest.fixture(scope="module", params=[0, pytest.param(10, marks=pytest.mark.slow)],
                ids=["unconditional", "conditional"])
def reads_per_step(request, tmp_path_factory):
    """Train STEPS steps in this process (the chapter's model, and a class-conditional one: its real and fake labels
    must not be read either); return {step: [(read, where), ...]} for reads made from the start of a step's
    train_step to the start of the next one."""
    found: dict[int, list[tuple[str, str]]] = {}
    current = {"step": 0}
    train_step = gan.trainer.train_step

    def counted_train_step(*args, **kwargs):
        current["step"] += 1
        return train_step(*args, **kwargs)

    def note(name: str) -> None:
        if current["step"]:
            where = "".join(traceback.format_stack(limit=4)[:-2]).strip().splitlines()[0]
            found.setdefault(current["step"], []).append((name, where))

    def counting(name, original):
        def read(self, *args, **kwargs):
            note(name)
            return original(self, *args, **kwargs)
        return read

    def to(self, *args, **kwargs):  # a copy to another device that waits for it
        result = original_to(self, *args, **kwargs)
        if result.device != self.device and not kwargs.get("non_blocking", False):
            note("blocking copy")
        return result

    original_to = torch.Tensor.to
    config = TrainConfig(cpu=True, data_dir=str(SHARED_DATA), split="test", no_download=True, max_steps=STEPS,
                         batch_size=32, log_every=LOG_EVERY, sample_every=LOG_EVERY, checkpoint_every=1000,
                         eval_every=0, report_to="none", output_dir=str(tmp_path_factory.mktemp("syncs")),
                         run_name="syncs", num_classes=request.param)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(gan.trainer, "train_step", counted_train_step)
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.Tensor, "to", to)
        gan.trainer.train(config)
    return found


def test_no_host_read_between_sync_points(reads_per_step):
    steady = [step for step in range(2, STEPS + 1) if step % LOG_EVERY]
    assert {step: reads_per_step[step] for step in steady if step in reads_per_step} == {}


def test_the_sync_points_do_read_so_the_count_can_see_reads(reads_per_step):
    assert all(reads_per_step.get(step) for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY))
