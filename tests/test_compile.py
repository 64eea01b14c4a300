"""--compile: torch.compile'd networks train like eager ones, and resume from their state exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from gan.config import TrainConfig
from gan.step import train_step
from gan.trainer import build_gan

STEPS = 3


def _batches(config: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.rand(config.batch_size, 1, 28, 28, generator=generator) * 2 - 1,
             torch.randn(config.batch_size, config.latent_dim, generator=generator)) for _ in range(2 * STEPS)]


def _train(gan, accelerator, batches) -> list[torch.Tensor]:
    return [train_step(accelerator, gan, real, noise) for real, noise in batches]


def _state(gan) -> dict:
    return copy.deepcopy({"generator": gan.generator.state_dict(), "discriminator": gan.discriminator.state_dict(),
                          "generator_optimizer": gan.generator_optimizer.state_dict(),
                          "discriminator_optimizer": gan.discriminator_optimizer.state_dict()})


def _load(gan, state: dict) -> None:
    for name, value in state.items():
        getattr(gan, name).load_state_dict(value)


@pytest.mark.slow  # inductor compiles C++ kernels for both networks' forward and backward: about a minute
def test_compiled_networks_train_like_eager_and_resume_exactly():
    accelerator = Accelerator(cpu=True)
    config = TrainConfig(cpu=True, latent_dim=16, base_width=8, batch_size=16, channels_last=False,
                         cpu_kernels=False, sync_bn=False)
    batches = _batches(config)
    eager = build_gan(config, accelerator)
    compiled = build_gan(TrainConfig(**{**config.to_dict(), "compile": True}), accelerator)
    assert list(compiled.generator.state_dict()) == list(eager.generator.state_dict())  # checkpoints unchanged

    eager_metrics = _train(eager, accelerator, batches[:STEPS])
    compiled_metrics = _train(compiled, accelerator, batches[:STEPS])
    for mine, theirs in zip(compiled_metrics, eager_metrics, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(compiled.generator.parameters(), eager.generator.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)

    saved = _state(compiled)
    uninterrupted = _train(compiled, accelerator, batches[STEPS:])
    resumed = build_gan(TrainConfig(**{**config.to_dict(), "compile": True, "seed": 7}), accelerator)
    _load(resumed, saved)
    assert all(torch.equal(a, b) for a, b in zip(_train(resumed, accelerator, batches[STEPS:]), uninterrupted,
                                                   strict=True))
    for mine, theirs in zip(resumed.generator.parameters(), compiled.generator.parameters(), strict=True):
        assert torch.equal(mine, theirs)
