"""One GAN training step: the chapter's D step, then its G step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# What train_step returns, in this order, as one tensor on the training device (read only at sync points).
STEP_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "skipped_steps")


@dataclass
class GAN:
    """The two prepared networks and their optimizers."""

    generator: nn.Module
    discriminator: nn.Module
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    # BCE-with-logits, at least in fp32: the chapter's Sigmoid + BCELoss objective, stable, allowed under autocast
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@contextmanager
def frozen(discriminator: nn.Module) -> Iterator[nn.Module]:
    """The discriminator for the G step: its parameters need no gradient there, only its input does.

    The chapter's G step also computes D's weight gradients, which the next D step's ``zero_grad`` throws away;
    freezing D's parameters skips that work (about a third of D's backward) and changes no number. Under DDP the
    G step goes around the wrapper: with no parameter gradients there is nothing to all-reduce, and DDP would
    otherwise wait for gradients that never come. Synchronized BatchNorm layers still synchronize (they are
    inside the module).
    """
    module = discriminator.module if isinstance(discriminator, DistributedDataParallel) else discriminator
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter in trainable:  # exactly those it froze
            parameter.requires_grad_(True)


def _cross_entropy(class_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    # in fp32 at least, like _bce
    if class_logits.dtype in (torch.float16, torch.bfloat16):
        class_logits = class_logits.float()
    return F.cross_entropy(class_logits, classes)


def train_step(accelerator: Accelerator, gan: GAN, real: torch.Tensor, noise: torch.Tensor,
               real_label: float = 1.0, real_classes: torch.Tensor | None = None,
               fake_classes: torch.Tensor | None = None, class_loss_weight: float = 0.0,
               wrong_classes: torch.Tensor | None = None, mismatch_loss_weight: float = 0.0) -> torch.Tensor:
    """One D step then one G step on this process's share of the batch, without waiting for the device.

    ``real_label`` < 1 is one-sided label smoothing: the D step's target for real images (the G step keeps 1).
    ``real_classes`` and ``fake_classes`` (int64 [B], a class-conditional GAN's; None for the chapter's) are the
    classes of the real images and the classes the generator is asked for: D judges each image with its class.
    ``class_loss_weight`` > 0 (conditional only; D needs its class head) adds AC-GAN's auxiliary classification
    loss: the D step adds weight x cross-entropy of the class head on the real images and their classes, the G step
    weight x cross-entropy of the class head on the fakes and the requested classes. The head learns classes from
    real images only: taught on fakes too (the AC-GAN paper's choice), it also learns whatever marks the generator
    leaves on a class's fakes and rewards them instead of the character (measured worse: docs/conditional.md).
    ``mismatch_loss_weight`` > 0 (conditional only, with ``wrong_classes``: a wrong class for each real image) makes
    D matching-aware (Reed et al. 2016): the D step adds weight x BCE of D's verdict on the real images shown with
    their wrong class, labelled fake, so that D must check that an image shows its class, and G is pushed to
    draw the class it was asked for. The real images pass through D once for both classes.

    Returns this process's detached metrics (order of ``STEP_METRICS``) on the training device: d_loss and g_loss
    (each with its class and mismatch terms, if any), the mean probabilities D(x) (each image with its own class)
    and D(G(z)) seen by the D step, and how many of the two optimizer steps fp16 loss scaling skipped. Nothing here
    reads a value back to the host, so the host can queue the next step at once.
    """
    scales = []  # the fp16 loss scale around each optimizer step (none without a scaler)

    # (1) Update D: maximize log D(x) + log(1 - D(G(z)))
    #     (+ weight x cross-entropy of D's class head on the real images, if AC-GAN)
    #     (+ weight x log(1 - D(x, wrong class)), if matching-aware)
    mismatch = bool(mismatch_loss_weight)
    if mismatch and wrong_classes is None:
        raise ValueError("a matching-aware D step (mismatch_loss_weight > 0) needs wrong_classes")
    judged = torch.stack([real_classes, wrong_classes], dim=1) if mismatch else real_classes  # (B, 2) or (B,)
    if class_loss_weight:
        real_logits, real_class_logits = gan.discriminator(real, judged, classify=True)  # (B[, 2]), (B, classes)
    else:
        real_logits = gan.discriminator(real, judged)  # (B[, 2])
    if mismatch:
        real_logits, wrong_logits = real_logits.unbind(dim=1)  # (B,), (B,)
    fake = gan.generator(noise, fake_classes)  # (B, 1, 28, 28)
    fake_logits = gan.discriminator(fake.detach(), fake_classes)  # (B,)
    d_loss = _bce(real_logits, real_label) + _bce(fake_logits, 0.0)
    if class_loss_weight:
        d_loss = d_loss + class_loss_weight * _cross_entropy(real_class_logits, real_classes)
    if mismatch:
        d_loss = d_loss + mismatch_loss_weight * _bce(wrong_logits, 0.0)
    # One backward for both halves: the same gradient as two, and one DDP all-reduce instead of two.
    gan.discriminator_optimizer.zero_grad(set_to_none=True)
    accelerator.backward(d_loss)
    _record_scale(accelerator, scales)
    gan.discriminator_optimizer.step()
    _record_scale(accelerator, scales)

    # (2) Update G: maximize log D(G(z)) (fakes labelled real: the non-saturating loss)
    #     (+ weight x cross-entropy of D's class head on the fakes and the requested classes, if AC-GAN)
    with frozen(gan.discriminator) as discriminator:
        if class_loss_weight:
            logits, class_logits = discriminator(fake, fake_classes, classify=True)
            g_loss = _bce(logits, 1.0) + class_loss_weight * _cross_entropy(class_logits, fake_classes)
        else:
            g_loss = _bce(discriminator(fake, fake_classes), 1.0)
        gan.generator_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(g_loss)
    _record_scale(accelerator, scales)
    gan.generator_optimizer.step()
    _record_scale(accelerator, scales)

    with torch.no_grad():
        metrics = [d_loss.detach(), g_loss.detach(), torch.sigmoid(real_logits.detach().float()).mean(),
                   torch.sigmoid(fake_logits.detach().float()).mean()]
        dtype = metrics[0].dtype
        return torch.stack([m.to(dtype) for m in metrics] + [skipped_steps(scales, real.device).to(dtype)])


def _record_scale(accelerator: Accelerator, scales: list[torch.Tensor]) -> None:
    scaler = accelerator.scaler
    if scaler is not None and getattr(scaler, "_scale", None) is not None:
        scales.append(scaler._scale.detach().clone())  # get_scale() would wait for the device: a copy does not


def skipped_steps(scales: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """How many optimizer steps fp16 loss scaling skipped, from the scale before and after each step.

    GradScaler skips a step exactly when it finds an overflow, and then always lowers the scale (it only ever
    raises it after a run of good steps), so each drop is one skipped step. Counted on the device: no sync.
    """
    if len(scales) < 2:
        return torch.zeros((), device=device)
    pairs = zip(scales[0::2], scales[1::2], strict=True)
    return sum((after < before).float() for before, after in pairs).reshape(())
