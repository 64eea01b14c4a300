"""The chapter's DCGAN for 28x28 grayscale images.

Module structure mirrors the chapter (``self.main`` is one ``nn.Sequential`` in its layer order), so state-dict keys
read ``main.0.weight``, ``main.1.running_mean``, ... The model code knows nothing of devices or parallelism.

With ``num_classes`` > 0 both networks are class-conditional, and only these modules are added to the chapter's:
the generator joins a learned label embedding (``label_embedding``, LABEL_DIM numbers per class) to z before its
first layer, whose input widens from latent_dim to latent_dim + LABEL_DIM; with ``class_norm`` (conditional
BatchNorm) each of its BatchNorm layers is followed by a class-specific per-channel scale and shift
(``class_norm``, starting at 1 and 0). The discriminator is a projection discriminator (Miyato & Koyama 2018):
its logit is the chapter's last layer plus the inner product of a learned class embedding (``projection``, one
vector per class) with the spatially summed features that layer reads; with ``class_head`` (for the auxiliary
classification loss of AC-GAN, Odena et al. 2017) a linear layer also reads those summed features as class logits.
With ``num_classes`` = 0 (the default) they are the chapter's networks, unchanged to the last parameter.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_DIM = 100
BASE_WIDTH = 28  # the chapter's "image_size": channel widths are multiples of it
IMAGE_SHAPE = (1, 28, 28)
LABEL_DIM = 10  # numbers per class in the conditional generator's label embedding, joined to z


class Generator(nn.Module):
    """z [N, latent_dim] or [N, latent_dim, 1, 1] (and, if conditional, labels int64 [N]) -> images [N, 1, 28, 28]
    in [-1, 1]."""

    def __init__(self, latent_dim: int = LATENT_DIM, base_width: int = BASE_WIDTH, num_classes: int = 0,
                 class_norm: bool = False):
        super().__init__()
        if class_norm and not num_classes:
            raise ValueError("conditional BatchNorm needs a conditional generator (num_classes > 0)")
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        w = base_width
        inputs = latent_dim + (LABEL_DIM if num_classes else 0)
        self.main = nn.Sequential(
            nn.ConvTranspose2d(inputs, w * 4, 4, 1, 0, bias=False),  # (N, 112, 4, 4)
            nn.BatchNorm2d(w * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False),  # (N, 56, 8, 8)
            nn.BatchNorm2d(w * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(w * 2, w, 4, 2, 2, bias=False),  # (N, 28, 14, 14)
            nn.BatchNorm2d(w),
            nn.ReLU(True),
            nn.ConvTranspose2d(w, 1, 4, 2, 1, bias=False),  # (N, 1, 28, 28)
            nn.Tanh(),
        )
        init_weights(self)
        if num_classes:
            # after the chapter's initialisation, so that an unconditional model draws the same initial weights
            self.label_embedding = nn.Embedding(num_classes, LABEL_DIM)  # N(0, 1): on the scale of z
        # where the class-specific scale and shift apply: after each BatchNorm (positions in self.main, which stay
        # valid when export folds a BatchNorm into its convolution)
        self.class_norm_positions = [i for i, layer in enumerate(self.main) if isinstance(layer, nn.BatchNorm2d)]
        if class_norm:
            self.class_norm = nn.ModuleList(
                ClassAffine(num_classes, self.main[i].num_features) for i in self.class_norm_positions
            )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() == 4:
            z = z.flatten(1)
        if self.num_classes:
            if labels is None:
                raise ValueError(f"this generator is conditional on {self.num_classes} classes: pass labels [N]")
            z = torch.cat([z, self.label_embedding(labels).to(z.dtype)], dim=1)
        x = z[:, :, None, None]
        if not hasattr(self, "class_norm"):
            return self.main(x)
        affines = dict(zip(self.class_norm_positions, self.class_norm, strict=True))
        for index, layer in enumerate(self.main):
            x = layer(x)
            if index in affines:
                x = affines[index](x, labels)
        return x


class ClassAffine(nn.Module):
    """Conditional BatchNorm's class part: x [N, C, H, W], labels [N] -> x * (1 + scale[label]) + shift[label],
    per channel. Starts at zero scale and shift: the plain BatchNorm before it, unchanged."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = self.scale(labels).to(x.dtype)[:, :, None, None]  # (N, C, 1, 1)
        shift = self.shift(labels).to(x.dtype)[:, :, None, None]
        return x * (1 + scale) + shift


class Discriminator(nn.Module):
    """images [N, 1, 28, 28] (and, if conditional, labels int64 [N]) -> logits [N] (no Sigmoid: the loss is
    BCE-with-logits). Conditional labels int64 [N, K] judge each image with K classes in one pass: logits [N, K]
    (the matching-aware loss shows a real image with its class and with a wrong one). With ``class_head``
    (conditional only) and ``classify=True``: (logits, class logits [N, num_classes]), the class head's reading of
    each image, for the auxiliary classification loss."""

    def __init__(self, base_width: int = BASE_WIDTH, num_classes: int = 0, class_head: bool = False):
        super().__init__()
        if class_head and not num_classes:
            raise ValueError("a class head needs a conditional discriminator (num_classes > 0)")
        self.num_classes = num_classes
        w = base_width
        self.main = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1, bias=False),  # (N, 28, 14, 14)
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, w * 2, 4, 2, 1, bias=False),  # (N, 56, 7, 7)
            nn.BatchNorm2d(w * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w * 2, w * 4, 4, 2, 1, bias=False),  # (N, 112, 3, 3)
            nn.BatchNorm2d(w * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w * 4, 1, 4, 2, 1, bias=False),  # (N, 1, 1, 1)
        )
        init_weights(self)
        if num_classes:
            self.projection = nn.Embedding(num_classes, w * 4)
            nn.init.normal_(self.projection.weight, 0.0, 0.02)  # like the convs: the class term starts small
        if class_head:
            self.class_head = nn.Linear(w * 4, num_classes)  # PyTorch's default init; after the others, like them

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                classify: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.num_classes:
            return self.main(images).flatten()
        if labels is None:
            raise ValueError(f"this discriminator is conditional on {self.num_classes} classes: pass labels [N]")
        features = self.main[:-1](images)  # (N, 112, 3, 3): what the chapter's last layer reads
        summed = features.sum(dim=(2, 3))  # (N, 112)
        unconditional = self.main[-1](features).flatten()  # (N,)
        if labels.dim() == 2:  # K classes per image: one pass through the layers, a projection per class
            projected = (self.projection(labels).to(features.dtype) * summed[:, None, :]).sum(dim=2)  # (N, K)
            logits = unconditional[:, None] + projected
        else:
            logits = unconditional + (self.projection(labels).to(features.dtype) * summed).sum(dim=1)
        if not classify:
            return logits
        if not hasattr(self, "class_head"):
            raise ValueError("this discriminator has no class head (built with class_head=False)")
        return logits, self.class_head(summed)  # (N,), (N, num_classes)


def init_weights(module: nn.Module) -> None:
    """The chapter's (and the DCGAN paper's) initialisation: convs N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)
