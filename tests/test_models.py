from __future__ import annotations

import pytest
import torch
from torch import nn

from gan.models import LABEL_DIM, Discriminator, Generator


def _conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k


def test_generator_shapes_for_both_noise_layouts():
    generator = Generator().eval()
    z = torch.randn(3, 100)
    flat, spatial = generator(z), generator(z[:, :, None, None])
    assert flat.shape == (3, 1, 28, 28)
    torch.testing.assert_close(flat, spatial, rtol=0, atol=0)
    assert flat.min() >= -1 and flat.max() <= 1


def test_layer_sizes_follow_the_chapter():
    generator, discriminator = Generator(), Discriminator()
    sizes, x = [], torch.randn(2, 100, 1, 1)
    for layer in generator.main:
        x = layer(x)
        if isinstance(layer, nn.ConvTranspose2d):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(112, 4, 4), (56, 8, 8), (28, 14, 14), (1, 28, 28)]
    sizes, x = [], torch.randn(2, 1, 28, 28)
    for layer in discriminator.main:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(28, 14, 14), (56, 7, 7), (112, 3, 3), (1, 1, 1)]
    assert discriminator(torch.randn(5, 1, 28, 28)).shape == (5,)


def test_parameter_counts_and_state_dict_keys():
    generator, discriminator = Generator(), Discriminator()
    g_convs = (
        _conv_params(100, 112, 4)
        + _conv_params(112, 56, 4)
        + _conv_params(56, 28, 4)
        + _conv_params(28, 1, 4)
    )
    d_convs = (
        _conv_params(1, 28, 4) + _conv_params(28, 56, 4) + _conv_params(56, 112, 4) + _conv_params(112, 1, 4)
    )
    assert sum(p.numel() for p in generator.parameters()) == g_convs + 2 * (112 + 56 + 28)
    assert sum(p.numel() for p in discriminator.parameters()) == d_convs + 2 * (56 + 112)
    keys = list(generator.state_dict())
    assert keys[:6] == [
        "main.0.weight",
        "main.1.weight",
        "main.1.bias",
        "main.1.running_mean",
        "main.1.running_var",
        "main.1.num_batches_tracked",
    ]
    assert not any(isinstance(m, nn.Sigmoid) for m in discriminator.modules())


@pytest.mark.parametrize("model_class", [Generator, Discriminator])
def test_initialisation_statistics(model_class):
    torch.manual_seed(0)
    model = model_class(base_width=64)  # wider, so the sample statistics are tight
    conv = torch.cat(
        [m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    )
    norm_weight = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    norm_bias = torch.cat([m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv.mean().item()) < 1e-3 and abs(conv.std().item() - 0.02) < 1e-3
    assert abs(norm_weight.mean().item() - 1) < 5e-3 and abs(norm_weight.std().item() - 0.02) < 5e-3
    assert torch.count_nonzero(norm_bias) == 0


def test_custom_latent_dim_and_width():
    generator = Generator(latent_dim=16, base_width=8)
    assert generator(torch.randn(2, 16)).shape == (2, 1, 28, 28)
    assert Discriminator(base_width=8)(torch.randn(2, 1, 28, 28)).shape == (2,)


def test_a_conditional_pair_adds_only_the_label_embedding_and_the_projection():
    torch.manual_seed(0)
    generator, discriminator = Generator(num_classes=10), Discriminator(num_classes=10)
    plain_g, plain_d = Generator(), Discriminator()
    assert set(generator.state_dict()) - set(plain_g.state_dict()) == {"label_embedding.weight"}
    assert set(discriminator.state_dict()) - set(plain_d.state_dict()) == {"projection.weight"}
    assert generator.main[0].in_channels == 100 + LABEL_DIM
    z, labels = torch.randn(6, 100), torch.tensor([0, 1, 2, 3, 4, 9])
    images = generator(z, labels)
    assert images.shape == (6, 1, 28, 28) and discriminator(images, labels).shape == (6,)
    assert not torch.allclose(generator(z, labels), generator(z, (labels + 1) % 10))  # the label matters
    assert not torch.allclose(discriminator(images, labels), discriminator(images, (labels + 1) % 10))
    with pytest.raises(ValueError, match="conditional on 10 classes"):
        generator(z)
