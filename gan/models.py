"""The chapter's DCGAN for 28x28 grayscale images.

Module structure mirrors the chapter (``self.main`` is one ``nn.Sequential`` in its layer order), so state-dict keys
read ``main.0.weight``, ``main.1.running_mean``, ... The model code knows nothing of devices or parallelism.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_DIM = 100
BASE_WIDTH = 28  # the chapter's "image_size": channel widths are multiples of it
IMAGE_SHAPE = (1, 28, 28)


class Generator(nn.Module):
    """z [N, latent_dim] or [N, latent_dim, 1, 1] -> images [N, 1, 28, 28] in [-1, 1]."""

    def __init__(self, latent_dim: int = LATENT_DIM, base_width: int = BASE_WIDTH):
        super().__init__()
        self.latent_dim = latent_dim
        w = base_width
        self.main = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, w * 4, 4, 1, 0, bias=False),  # (N, 112, 4, 4)
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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    """images [N, 1, 28, 28] -> logits [N] (no Sigmoid: the loss is BCE-with-logits)."""

    def __init__(self, base_width: int = BASE_WIDTH):
        super().__init__()
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images).flatten()


def init_weights(module: nn.Module) -> None:
    """The chapter's (and the DCGAN paper's) initialisation: convs N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)
