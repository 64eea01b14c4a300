"""gan/trainer.py across 2 real gloo processes, started in-process so that one function can be replaced."""

from __future__ import annotations

import os

import pytest
import torch.distributed as dist
from helpers import SHARED_DATA, free_port, run_processes

SKIPPED_AT_CALL = 3  # the step at which the replaced skip counter reports one skipped optimizer step


def _worker(rank: int, world_size: int, port: int, output_dir: str, queue) -> None:
    # The variables torchrun sets: accelerate starts gloo processes from them.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    import torch

    import gan.step
    import gan.trainer
    from gan.config import TrainConfig

    calls = []

    def one_skip(scales, device) -> torch.Tensor:  # what fp16 loss scaling reports for a skip: the same everywhere
        calls.append(None)
        return torch.tensor(float(len(calls) == SKIPPED_AT_CALL), device=device)

    gan.step.skipped_steps = one_skip
    config = TrainConfig(cpu=True, data_dir=str(SHARED_DATA), split="test", no_download=True, max_steps=5,
                         batch_size=32, report_to="none", eval_every=0, ema_decay=0, output_dir=output_dir,
                         run_name="skips")
    state = gan.trainer.train(config)
    queue.put((rank, {"skipped_steps": state.skipped_steps, "world_size": world_size,
                      "group_left": dist.is_initialized()}))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("two-process-run"))
    return run_processes(_worker, 2, free_port(), output_dir)


@pytest.mark.slow  # two spawned gloo processes training
def test_a_step_skipped_on_every_process_counts_once(two_process_run):
    assert {result["skipped_steps"] for result in two_process_run.values()} == {1}


@pytest.mark.slow
def test_the_process_group_is_closed_without_a_tracker(two_process_run):
    assert [result["group_left"] for result in two_process_run.values()] == [False, False]
