"""Images from a generator: a module in memory, a training run folder (PyTorch) or an exported ONNX model.

A :data:`Sampler` maps noise to images; :func:`generate` feeds it the sample noise of a seed from
:func:`gan.noise.latent_noise`, so PyTorch and onnxruntime (and ``python -m gan.generate``) turn the same seed
into the same images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from gan.artifacts import ArtifactError, load_generator
from gan.classifier import EvaluationError
from gan.noise import latent_noise_batches, sample_labels

Sampler = Callable[..., torch.Tensor]
"""z float32 [B, latent_dim] (CPU) -> images [B, 1, 28, 28] in [-1, 1]; a conditional generator's sampler also takes
labels int64 [B] as a second argument."""


def generate(
    sampler: Sampler,
    latent_dim: int,
    num_samples: int,
    seed: int = 0,
    batch_size: int = 1000,
    num_classes: int = 0,
) -> torch.Tensor:
    """``num_samples`` images [N, 1, 28, 28] (CPU float32) from the sample noise of ``seed``, in batches; for a
    conditional generator (``num_classes`` > 0) with the labels of :func:`gan.noise.sample_labels`."""
    noise = latent_noise_batches(seed, "samples", num_samples, latent_dim, batch_size)  # (<= batch_size, latent_dim)
    labels = generation_labels(num_samples, num_classes)
    images, start = [], 0
    for z in noise:
        z = torch.from_numpy(z)
        batch = sampler(z) if labels is None else sampler(z, labels[start : start + len(z)])
        images.append(batch.float().cpu())
        start += len(z)
    return torch.cat(images)


def generation_labels(num_samples: int, num_classes: int) -> torch.Tensor | None:
    """The labels int64 [num_samples] that :func:`generate` asks a conditional generator for (None when
    ``num_classes`` is 0): what the evaluator needs beside the images."""
    return torch.from_numpy(sample_labels(num_samples, num_classes)) if num_classes else None


def torch_sampler(generator: nn.Module) -> Sampler:
    """Sample ``generator`` as it is (the caller chooses eval or train mode) on the device and dtype of its weights."""
    weight = next(generator.parameters())

    @torch.no_grad()
    def sample(z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return generator(z.to(weight.device, weight.dtype))
        return generator(z.to(weight.device, weight.dtype), labels.to(weight.device))

    return sample


def onnx_sampler(path: str | os.PathLike) -> tuple[Sampler, int, int]:
    """(sampler, latent_dim, num_classes) of a model written by export.py, run on the CPU by
    :mod:`gan.onnx_generator`; ``num_classes`` is 0 for an unconditional model (no ``labels`` input)."""
    try:
        from gan.onnx_generator import ModelError, OnnxGenerator  # imports onnxruntime: only needed for ONNX models
    except ImportError as error:
        raise EvaluationError(
            f"evaluating {path} needs onnxruntime ({error}); install it with `pip install -e '.[export]'`."
        ) from None
    try:
        generator = OnnxGenerator(path)
    except ModelError as error:  # one error type for every unusable model file, ONNX or run folder
        raise ArtifactError(str(error)) from None

    def sample(z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        label_array = None if labels is None else labels.cpu().numpy()
        try:
            return torch.from_numpy(generator.generate_raw(z.float().numpy(), label_array))
        except ModelError as error:  # NaN/inf images: a broken model file, like one that cannot be loaded
            raise ArtifactError(str(error)) from None

    return sample, generator.latent_dim, generator.num_classes


class OpenedGenerator(NamedTuple):
    """A generator ready to sample: what :func:`generate` needs, and where it came from."""

    sampler: Sampler
    latent_dim: int
    kind: str  # 'pytorch' (a run folder) or 'onnx'
    num_classes: int  # 0: unconditional; else the sampler takes labels 0..num_classes - 1

    def generate(
        self, num_samples: int, seed: int = 0, batch_size: int = 1000
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images [N, 1, 28, 28], the labels int64 [N] they were asked for or None): :func:`generate`'s samples."""
        images = generate(self.sampler, self.latent_dim, num_samples, seed, batch_size, self.num_classes)
        return images, generation_labels(num_samples, self.num_classes)


def open_generator(source: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "final"
                   ) -> OpenedGenerator:
    """A training run folder (kind 'pytorch': its ``weights``, "final" or "best") or an .onnx file ('onnx'),
    conditional or not, ready to sample."""
    source = Path(source)
    if source.suffix == ".onnx":
        sampler, latent_dim, num_classes = onnx_sampler(source)
        return OpenedGenerator(sampler, latent_dim, "onnx", num_classes)
    if not source.is_dir():
        raise ArtifactError(f"{source} is neither a training run folder nor an .onnx file.")
    generator, config = load_generator(source, device, weights)
    return OpenedGenerator(torch_sampler(generator), int(config["latent_dim"]), "pytorch", generator.num_classes)
