"""Exponential moving average of the generator's parameters and buffers."""

from __future__ import annotations

import torch
from torch import nn

from gan.artifacts import has_class_norm, plain_state_dict
from gan.models import Generator


class GeneratorEMA:
    """A plain :class:`Generator` (eval mode) whose weights trail the trained one's: ema <- decay*ema + (1-decay)*w.

    Floating-point buffers (BatchNorm running statistics) are averaged like parameters; integer ones are copied.
    The decay warms up as min(decay, (1 + t) / (10 + t)) over update t, so that a short run's average is not
    dominated by the random initial weights (with 0.999 from step 0, 390 steps leave 68% of the weight there).
    """

    def __init__(self, generator: nn.Module, decay: float, device: torch.device):
        self.decay = decay
        self.updates = 0
        state = plain_state_dict(generator)
        # latent_dim and num_classes from the module: a conditional first layer reads latent_dim + LABEL_DIM numbers
        self.model = Generator(generator.latent_dim, state["main.0.weight"].shape[1] // 4, generator.num_classes,
                               class_norm=has_class_norm(state))
        self.model.load_state_dict(state)
        dtype = next(generator.parameters()).dtype  # fp64 runs (--dtype float64) average in fp64
        self.model.to(device, dtype).eval().requires_grad_(False)
        if any(p.dim() == 4 and not p.is_contiguous() for p in generator.parameters()):
            self.model.to(memory_format=torch.channels_last)  # the trained weights' layout: no copies in the update
        averages = self.model.state_dict()
        self._floats = [name for name, value in averages.items() if value.is_floating_point()]
        self._others = [name for name, value in averages.items() if not value.is_floating_point()]

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        current, averages = generator.state_dict(), self.model.state_dict()
        targets = [averages[name] for name in self._floats]
        values = [current[name].to(target.dtype) for name, target in zip(self._floats, targets, strict=True)]
        torch._foreach_lerp_(targets, values, 1 - decay)
        for name in self._others:
            averages[name].copy_(current[name])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The average and its update count, for a checkpoint."""
        averages = {f"ema.{name}": value for name, value in self.model.state_dict().items()}
        return {**averages, "ema.updates": torch.tensor(self.updates)}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`tensors` returned."""
        names = self.model.state_dict().keys()
        self.model.load_state_dict({name: tensors[f"ema.{name}"] for name in names})
        self.updates = int(tensors["ema.updates"])
