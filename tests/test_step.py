"""gan.step.train_step against the chapter's step written out literally, from the same weights and batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from gan.cpu_kernels import use_cpu_kernels
from gan.models import LATENT_DIM, Discriminator, Generator
from gan.step import GAN, frozen, train_step


def _sgd(module: torch.nn.Module) -> torch.optim.SGD:
    # SGD, not the recipe's Adam: Adam's first steps are about lr * sign(gradient), which turns float64 rounding
    # in near-zero gradients into 1e-6 weight differences; SGD keeps the comparison linear in the gradients.
    return torch.optim.SGD(module.parameters(), lr=0.05)


def _chapter_step(generator, discriminator, opt_g, opt_d, real, noise):
    """The chapter's step: D on real then on the detached fake, step; G step through D with D's gradients on."""
    ones, zeros = torch.ones(len(real), dtype=real.dtype), torch.zeros(len(real), dtype=real.dtype)
    discriminator.zero_grad()
    F.binary_cross_entropy_with_logits(discriminator(real), ones).backward()
    fake = generator(noise)
    F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros).backward()
    opt_d.step()
    generator.zero_grad()
    F.binary_cross_entropy_with_logits(discriminator(fake), ones).backward()
    opt_g.step()


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


@pytest.mark.parametrize(
    ("channels_last", "cpu_kernels"), [(False, False), (True, False), (True, True)],
    ids=["contiguous", "channels-last", "channels-last+cpu-kernels"],
)
def test_train_step_matches_the_chapter_step(accelerator, channels_last, cpu_kernels):
    """Same weights after 3 steps (float64): the one D backward, the frozen-D G step, the channels-last layout and
    the CPU kernels (their float64 paths; the bf16 GEMM has its own tests) change no number."""
    torch.manual_seed(0)
    generator, discriminator = Generator().double(), Discriminator().double()
    reference = copy.deepcopy(generator), copy.deepcopy(discriminator)
    if channels_last:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
        assert generator.main[3].weight.is_contiguous(memory_format=torch.channels_last)
    if cpu_kernels:
        assert (len(use_cpu_kernels(generator)), len(use_cpu_kernels(discriminator))) == (5, 4)
    gan = GAN(generator, discriminator, _sgd(generator), _sgd(discriminator))
    ref_opts = _sgd(reference[0]), _sgd(reference[1])
    for _ in range(3):
        real = torch.rand(32, 1, 28, 28, dtype=torch.float64) * 2 - 1
        noise = torch.randn(32, LATENT_DIM, dtype=torch.float64)
        train_step(accelerator, gan, real, noise)
        _chapter_step(*reference, *ref_opts, real, noise)
    for ours, theirs in zip((generator, discriminator), reference, strict=True):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-12), name  # float64 rounding only
    assert all(p.requires_grad for p in discriminator.parameters())  # trainable again after the G step


def test_frozen_discriminator_still_passes_gradient_to_its_input():
    discriminator = Discriminator()
    images = torch.randn(4, 1, 28, 28, requires_grad=True)
    with frozen(discriminator) as frozen_d:
        assert not any(p.requires_grad for p in frozen_d.parameters())
        frozen_d(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())


def test_frozen_restores_only_what_it_froze():
    discriminator = Discriminator()
    discriminator.main[0].weight.requires_grad_(False)  # frozen by the caller, not by the G step
    with frozen(discriminator):
        pass
    assert not discriminator.main[0].weight.requires_grad
    assert discriminator.main[2].weight.requires_grad
