"""CPUSyncBatchNorm across 2 real gloo processes against one nn.BatchNorm2d on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from helpers import free_port, run_processes
from torch import nn

from gan.cpu_kernels import use_cpu_kernels
from gan.models import Generator
from gan.sync_batchnorm import CPUSyncBatchNorm, convert_sync_batchnorm

BATCH, CHANNELS, SIZE = 16, 5, 6


def _inputs():
    generator = torch.Generator().manual_seed(0)
    # Offset mean and uneven scales per channel, like post-ReLU activations: stresses the variance computation.
    x = (
        torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator)
        * torch.linspace(0.1, 3, CHANNELS)[None, :, None, None]
        + torch.linspace(-2, 5, CHANNELS)[None, :, None, None]
    )
    upstream = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator)
    weight = 1 + 0.1 * torch.randn(CHANNELS, generator=generator)
    bias = 0.1 * torch.randn(CHANNELS, generator=generator)
    return x, upstream, weight, bias


def _run(
    layer: nn.BatchNorm2d, x: torch.Tensor, upstream: torch.Tensor, steps: int = 3
) -> dict[str, torch.Tensor]:
    """A few forward passes (running stats move), the last one differentiated with loss = sum(y * upstream)."""
    x = x.clone().requires_grad_(True)
    for _ in range(steps - 1):
        layer(x)
    y = layer(x)
    (y * upstream).sum().backward()
    return {
        "output": y.detach(),
        "input_grad": x.grad,
        "weight_grad": layer.weight.grad.clone(),
        "bias_grad": layer.bias.grad.clone(),
        "running_mean": layer.running_mean.clone(),
        "running_var": layer.running_var.clone(),
    }


def _make_layer(cls, weight, bias):
    layer = cls(CHANNELS)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        x, upstream, weight, bias = _inputs()
        shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        result = _run(_make_layer(CPUSyncBatchNorm, weight, bias), x[shard], upstream[shard])
        # weight/bias grads are per-process partial sums (DDP averages them); sum to compare with one process
        for key in ("weight_grad", "bias_grad"):
            dist.all_reduce(result[key])
        queue.put((rank, result))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results():
    return run_processes(_worker, 2, free_port(), timeout=120)


@pytest.mark.slow  # two spawned gloo processes
def test_two_processes_match_one_batchnorm(distributed_results):
    x, upstream, weight, bias = _inputs()
    reference = _run(_make_layer(nn.BatchNorm2d, weight, bias), x, upstream)
    half = BATCH // 2
    for rank, shard in ((0, slice(0, half)), (1, slice(half, BATCH))):
        got = distributed_results[rank]
        torch.testing.assert_close(got["output"], reference["output"][shard], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["input_grad"], reference["input_grad"][shard], atol=1e-5, rtol=0)
        for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            torch.testing.assert_close(got[key], reference[key], atol=1e-5, rtol=1e-6, msg=key)


def test_single_process_falls_back_to_plain_batchnorm():
    x, upstream, weight, bias = _inputs()
    reference = _run(_make_layer(nn.BatchNorm2d, weight, bias), x, upstream)
    got = _run(_make_layer(CPUSyncBatchNorm, weight, bias), x, upstream)
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, atol=0, rtol=0, msg=key)


def test_conversion_keeps_plain_state_dict_keys():
    plain = Generator()
    fast = Generator()
    assert "main.7" in use_cpu_kernels(fast)  # a BatchNorm2d subclass: converted like the plain layers
    converted = convert_sync_batchnorm(fast, torch.device("cpu"))
    assert sum(type(m) is CPUSyncBatchNorm for m in converted.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) and type(m) is not CPUSyncBatchNorm for m in converted.modules())
    assert list(converted.state_dict()) == list(plain.state_dict())
    Generator().load_state_dict(converted.state_dict())  # loads into the plain model
