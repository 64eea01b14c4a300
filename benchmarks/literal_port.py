"""A literal port of the chapter's training loop, shared by the speed benchmark and the tuning study.

Per-item PIL image -> tensor -> x/256 (values in [0, 1)), ``DataLoader(batch_size=128, shuffle=True)`` with the
default ``drop_last=False``, the discriminator ending in a Sigmoid and trained with ``nn.BCELoss`` (D on real,
backward; D on the detached fake, backward; step; then G with labels 1), Adam(2e-4, betas=(0.5, 0.999)) for both,
eager fp32. Weights, shuffling and noise all come from the global RNG, as in the chapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from gan.data import load_kmnist
from gan.models import LATENT_DIM, Discriminator, Generator


class KMNISTItems(Dataset):
    """What ``torchvision.datasets.KMNIST(transform=...)`` does per item: PIL image, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, signed_inputs: bool = False):
        self.images, self.labels = images, labels
        scale = (lambda x: x.float() / 127.5 - 1) if signed_inputs else (lambda x: x.float() / 256)
        self.transform = transforms.Compose([transforms.PILToTensor(), transforms.Lambda(scale)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index].numpy(), mode="L")), self.labels[index]


@dataclass
class LiteralGAN:
    generator: Generator
    discriminator: nn.Module  # Discriminator + Sigmoid
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    criterion: nn.Module
    loader: DataLoader
    device: torch.device  # the chapter's: CUDA when available, else the CPU

    def step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chapter's D step then G step; returns (d_loss, g_loss)."""
        real = real.to(self.device)
        batch_size = real.shape[0]
        # (1) Update D: maximize log D(x) + log(1 - D(G(z)))
        self.discriminator.zero_grad()
        output = self.discriminator(real)
        loss_real = self.criterion(output, torch.ones(batch_size, device=self.device))
        loss_real.backward()
        noise = torch.randn(batch_size, LATENT_DIM, 1, 1, device=self.device)
        fake = self.generator(noise)
        output = self.discriminator(fake.detach())
        loss_fake = self.criterion(output, torch.zeros(batch_size, device=self.device))
        loss_fake.backward()
        self.optimizer_d.step()
        # (2) Update G: maximize log D(G(z))
        self.generator.zero_grad()
        output = self.discriminator(fake)
        loss_g = self.criterion(output, torch.ones(batch_size, device=self.device))
        loss_g.backward()
        self.optimizer_g.step()
        return (loss_real + loss_fake).detach(), loss_g.detach()

    def batches(self) -> Iterator[torch.Tensor]:
        """Real batches forever, epoch after epoch."""
        while True:
            for real, _ in self.loader:
                yield real


def build_literal(data_dir: str, seed: int, signed_inputs: bool = False, batch_size: int = 128,
                  device: str | torch.device = "cpu") -> LiteralGAN:
    """The chapter's networks, optimizers and data loader on the 10,000-image test split, on ``device``."""
    data = load_kmnist(data_dir, "test", download=False)
    torch.manual_seed(seed)
    device = torch.device(device)
    generator = Generator().to(device)
    discriminator = nn.Sequential(Discriminator(), nn.Sigmoid()).to(device)
    return LiteralGAN(
        generator,
        discriminator,
        torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        nn.BCELoss(),
        DataLoader(KMNISTItems(data.images, data.labels, signed_inputs), batch_size=batch_size, shuffle=True),
        device,
    )
