"""gan/ema.py: the average follows ema <- d*ema + (1-d)*w with the warm-up decay, in either memory layout."""

from __future__ import annotations

import pytest
import torch

from gan.ema import GeneratorEMA
from gan.models import Generator


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_ema_matches_the_formula(channels_last):
    torch.manual_seed(0)
    generator = Generator().double()
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
    ema = GeneratorEMA(generator, decay=0.5, device=torch.device("cpu"))
    expected = {k: v.clone() for k, v in generator.state_dict().items()}
    for update in range(3):
        with torch.no_grad():
            for parameter in generator.parameters():
                parameter.add_(torch.randn_like(parameter))
            generator.main[1].running_mean.add_(1.0)
            generator.main[1].num_batches_tracked.add_(1)
        ema.update(generator)
        decay = min(0.5, (1 + update) / (10 + update))  # the warm-up decay: 0.1, 0.18, 0.25 here
        for name, value in generator.state_dict().items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
            else:
                expected[name] = value.clone()
    averaged = ema.model.state_dict()
    assert ema.updates == 3 and averaged.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-12, atol=1e-12, msg=name)
    assert averaged["main.1.num_batches_tracked"].item() == 3
    assert averaged["main.3.weight"].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
