"""Images from a generator: a module in memory, a training run folder (PyTorch) or an exported ONNX model.

A :data:`Sampler` maps noise to images; :func:`generate` feeds it the sample noise of a seed from
:func:`gan.noise.latent_noise`, so PyTorch and onnxruntime (and ``python -m gan.generate``) turn the same seed
into the same images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gan.artifacts import ArtifactError, load_generator
from gan.classifier import EvaluationError
from gan.noise import latent_noise_batches, sample_labels

Sampler = Callable[..., torch.Tensor]
"""z float32 [B, latent_dim] (CPU) -> images [B, 1, 28, 28] in [-1, 1]; a conditional generator's sampler also takes
labels int64 [B] as a second argument."""


def generate(
    sampler: Sampler, latent_dim: int, num_samples: int, seed: int = 0, batch_size: int = 1000,
    num_classes: int = 0,
) -> torch.Tensor:
    """``num_samples`` images [N, 1, 28, 28] (CPU float32) from the sample noise of ``seed``, in batches; for a
    conditional generator (``num_classes`` > 0) with the labels of :func:`gan.noise.sample_labels`."""
    noise = latent_noise_batches(seed, "samples", num_samples, latent_dim, batch_size)  # (<= batch_size, latent_dim)
    labels = torch.from_numpy(sample_labels(num_samples, num_classes)) if num_classes else None
    images, start = [], 0
    for z in noise:
        z = torch.from_numpy(z)
        batch = sampler(z) if labels is None else sampler(z, labels[start : start + len(z)])
        images.append(batch.float().cpu())
        start += len(z)
    return torch.cat(images)


def torch_sampler(generator: nn.Module) -> Sampler:
    """Sample ``generator`` as it is (the caller chooses eval or train mode) on the device and dtype of its weights."""
    weight = next(generator.parameters())

    @torch.no_grad()
    def sample(z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return generator(z.to(weight.device, weight.dtype))
        return generator(z.to(weight.device, weight.dtype), labels.to(weight.device))

    return sample


def onnx_sampler(path: str | os.PathLike) -> tuple[Sampler, int]:
    """(sampler, latent_dim) of a model written by export.py, run on the CPU by :mod:`gan.onnx_generator`."""
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
        if labels is not None:
            raise ArtifactError(f"{path}: conditional ONNX models are not supported yet")
        try:
            return torch.from_numpy(generator.generate_raw(z.float().numpy()))
        except ModelError as error:  # NaN/inf images: a broken model file, like one that cannot be loaded
            raise ArtifactError(str(error)) from None

    return sample, generator.latent_dim


def open_generator(source: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Sampler, int, str]:
    """(sampler, latent_dim, kind) of a training run folder (kind 'pytorch') or an .onnx file ('onnx')."""
    source = Path(source)
    if source.suffix == ".onnx":
        sampler, latent_dim = onnx_sampler(source)
        return sampler, latent_dim, "onnx"
    if not source.is_dir():
        raise ArtifactError(f"{source} is neither a training run folder nor an .onnx file.")
    generator, config = load_generator(source, device)
    return torch_sampler(generator), int(config["latent_dim"]), "pytorch"
