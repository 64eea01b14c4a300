"""gan/cpu_kernels.py: the faster CPU kernels compute what PyTorch's own layers compute."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan.cpu_kernels import (
    GemmWeightGradConv2d,
    SubpixelConvTranspose2d,
    SubpixelGradConv2d,
    _ConvWithGemmWeightGrad,
    _product,
    subpixel_conv_transpose,
    use_cpu_kernels,
)
from gan.models import Discriminator, Generator

# (transposed, in, out, kernel, stride, padding, input size): every convolution of the two networks, plus odd ones
CONVOLUTIONS = [
    (True, 100, 112, 4, 1, 0, 1),
    (True, 112, 56, 4, 2, 1, 4),
    (True, 56, 28, 4, 2, 2, 8),
    (True, 28, 1, 4, 2, 1, 14),
    (False, 1, 28, 4, 2, 1, 28),
    (False, 28, 56, 4, 2, 1, 14),
    (False, 56, 112, 4, 2, 1, 7),
    (False, 112, 1, 4, 2, 1, 3),
    (False, 16, 24, 3, 1, 1, 9),
    (True, 24, 16, 3, 3, 2, 5),
]


def _tensors(layer_args, channels_last=False):
    """A float64 input and weight for a layer of CONVOLUTIONS' form."""
    transposed, c_in, c_out, kernel, _, _, size = layer_args
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, c_in, size, size, dtype=torch.float64, generator=generator)
    shape = (c_in, c_out, kernel, kernel) if transposed else (c_out, c_in, kernel, kernel)
    weight = torch.randn(*shape, dtype=torch.float64, generator=generator)
    if channels_last:
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    return x.requires_grad_(), weight.requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("layer_args", CONVOLUTIONS, ids=lambda a: f"{'T' if a[0] else ''}conv{a[1]}-{a[2]}s{a[4]}")
def test_gemm_weight_gradient_equals_pytorchs(layer_args, channels_last):
    transposed, _, _, _, stride, padding, _ = layer_args
    x, weight = _tensors(layer_args, channels_last=channels_last)
    expected_out = (F.conv_transpose2d if transposed else F.conv2d)(x, weight, stride=stride, padding=padding)
    grad = torch.randn_like(expected_out)
    expected_dx, expected_dw = torch.autograd.grad(expected_out, (x, weight), grad)
    out = _ConvWithGemmWeightGrad.apply(x, weight, (stride, stride), (padding, padding), transposed)
    dx, dw = torch.autograd.grad(out, (x, weight), grad)
    assert torch.equal(out, expected_out)
    assert torch.equal(dx, expected_dx)  # oneDNN's input gradient, unchanged
    assert dw.shape == weight.shape
    torch.testing.assert_close(dw, expected_dw, rtol=1e-12, atol=1e-12)  # float64 rounding only


@pytest.mark.parametrize("padding", [1, 2])
@pytest.mark.parametrize("size", [14, 13])
def test_subpixel_form_equals_transposed_convolution(padding, size):
    x, weight = _tensors((True, 28, 1, 4, 2, padding, size))
    expected = F.conv_transpose2d(x, weight, stride=2, padding=padding)
    torch.testing.assert_close(subpixel_conv_transpose(x, weight, padding), expected, rtol=1e-12, atol=1e-12)


def _against_pytorch(layer, reference, x):
    """The kernel ``layer`` and PyTorch's ``reference`` on float64 ``x``: outputs and input and weight gradients
    agree to rounding. Returns both outputs for further checks."""
    out, expected = layer(x), reference(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, layer.weight), grad)
    theirs = torch.autograd.grad(expected, (x, reference.weight), grad)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    return out, expected


@pytest.mark.parametrize("size", [28, 27])  # 27: the input gradient is one larger than the default transposed size
def test_subpixel_input_gradient_of_a_one_channel_convolution(size):
    layer = nn.Conv2d(1, 28, 4, 2, 1, bias=False).double()
    reference = copy.deepcopy(layer)
    assert use_cpu_kernels(layer) == {"": "SubpixelGradConv2d"}
    x = torch.randn(5, 1, size, size, dtype=torch.float64, requires_grad=True)
    out, expected = _against_pytorch(layer, reference, x)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("size", [1, 3])  # 1x1: the matrix product; 3x3: the parent's path
def test_matmul_form_of_a_transposed_convolution(channels_last, size):
    layer = nn.ConvTranspose2d(100, 112, 4, 1, 0, bias=False).double()
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(layer)
    assert use_cpu_kernels(layer) == {"": "MatmulConvTranspose2d"}
    x = torch.randn(7, 100, size, size, dtype=torch.float64, requires_grad=True)
    _against_pytorch(layer, reference, x)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize(
    ("size", "kernel", "padding", "stride"),
    [(3, 4, 1, 2), (4, 4, 0, 1), (2, 4, 1, 2), (3, 3, 0, 1), (5, 4, 1, 2), (4, 4, 1, 1)],
    ids=["D-head", "exact", "smaller", "3x3", "2x2-out", "3x3-out"],  # the last two: GemmWeightGradConv2d's path
)
def test_matmul_form_of_a_convolution_to_one_position(channels_last, size, kernel, padding, stride):
    layer = nn.Conv2d(112, 1, kernel, stride, padding, bias=False).double()
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(layer)
    assert use_cpu_kernels(layer) == {"": "MatmulConv2d"}
    x = torch.randn(7, 112, size, size, dtype=torch.float64, requires_grad=True)
    out, expected = _against_pytorch(layer, reference, x)
    one_position = expected.shape[-2:] == (1, 1)
    assert (out.grad_fn.name() != "ConvolutionBackward0") == one_position


@pytest.mark.parametrize("inner", [4096, 6272, 4095, 1152])  # split in two, split, odd, short
def test_split_product_equals_the_product(inner):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(inner, 56, dtype=torch.float64, generator=generator).t()  # a transposed view, as in the kernels
    b = torch.randn(inner, 448, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(_product(a, b), a @ b, rtol=1e-12, atol=1e-12)
    low = _product(a.bfloat16(), b.bfloat16())
    assert low.dtype == torch.bfloat16
    exact = a @ b
    assert ((low.double() - exact).abs().max() / exact.abs().max()).item() < 1e-2


def test_gemm_weight_gradient_of_a_full_batch_uses_the_split_product():
    """D's second layer at the chapter's batch: 6,272 output pixels, so the weight gradient's product is split."""
    layer_args = (False, 28, 56, 4, 2, 1, 14)
    _, weight = _tensors(layer_args, channels_last=True)
    x = torch.randn(128, 28, 14, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    expected_out = F.conv2d(x, weight, stride=2, padding=1)
    grad = torch.randn_like(expected_out)
    expected_dw = torch.autograd.grad(expected_out, weight, grad)[0]
    out = _ConvWithGemmWeightGrad.apply(x, weight, (2, 2), (1, 1), False)
    torch.testing.assert_close(torch.autograd.grad(out, weight, grad)[0], expected_dw, rtol=1e-12, atol=1e-12)


def _batchnorm_pair(channels):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(channels)
    nn.init.normal_(plain.weight, 1.0, 0.3)
    nn.init.normal_(plain.bias, 0.0, 0.3)
    fast = copy.deepcopy(plain)
    assert use_cpu_kernels(fast) == {"": "ChannelsFirstBatchNorm2d"}
    return plain, fast


def test_channels_first_batchnorm_is_pytorchs_batchnorm_on_a_planar_copy():
    plain, fast = _batchnorm_pair(28)
    x = (torch.randn(16, 28, 14, 14) * 2 + 0.5).bfloat16().contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    results = []
    for layer, memory_format in ((fast, torch.channels_last), (plain, torch.contiguous_format)):
        # the same arithmetic as PyTorch's on channels-first copies of the input and the gradient
        data = x.contiguous(memory_format=memory_format).requires_grad_()
        out = layer(data)
        upstream = grad.contiguous(memory_format=memory_format)
        results.append((out, *torch.autograd.grad(out, (data, layer.weight, layer.bias), upstream)))
    (out, dx, dw, db), (ref_out, ref_dx, ref_dw, ref_db) = results
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert dx.is_contiguous(memory_format=torch.channels_last) and not dx.is_contiguous()
    assert torch.equal(out, ref_out) and torch.equal(dx, ref_dx)
    assert torch.equal(dw, ref_dw) and torch.equal(db, ref_db)
    for key, value in plain.state_dict().items():  # running statistics and the batch count
        assert torch.equal(fast.state_dict()[key], value), key
    # and it agrees with the channels-last kernel to bf16 rounding
    data = x.detach().requires_grad_()
    channels_last_out = nn.BatchNorm2d.forward(copy.deepcopy(plain), data)
    torch.testing.assert_close(out.float(), channels_last_out.float(), rtol=2e-2, atol=2e-2)


def test_channels_first_batchnorm_steps_aside_elsewhere():
    _, fast = _batchnorm_pair(28)
    x = torch.randn(4, 28, 6, 6).contiguous(memory_format=torch.channels_last)
    assert fast(x).grad_fn.name() == "NativeBatchNormBackward0"  # float32: the channels-last kernel is fine there
    assert fast(x.bfloat16()).grad_fn.name() == "_ToLayoutBackward"
    assert fast(x.bfloat16().contiguous()).grad_fn.name() == "NativeBatchNormBackward0"  # already channels-first
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), nn.BatchNorm2d.forward(fast, x))


def test_which_layers_switch_and_state_is_unchanged():
    generator, discriminator = Generator(), Discriminator()
    before = {k: v.clone() for k, v in {**generator.state_dict(), **discriminator.state_dict()}.items()}
    assert use_cpu_kernels(generator) == {
        "main.0": "MatmulConvTranspose2d",
        "main.3": "GemmWeightGradConvTranspose2d",
        "main.6": "GemmWeightGradConvTranspose2d",
        "main.7": "ChannelsFirstBatchNorm2d",  # 28 channels; the 112- and 56-channel layers stay
        "main.9": "SubpixelConvTranspose2d",
    }
    assert use_cpu_kernels(discriminator) == {
        "main.0": "SubpixelGradConv2d",
        "main.2": "GemmWeightGradConv2d",
        "main.5": "GemmWeightGradConv2d",
        "main.8": "MatmulConv2d",
    }
    after = {**generator.state_dict(), **discriminator.state_dict()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert isinstance(generator.main[9], nn.ConvTranspose2d) and isinstance(discriminator.main[2], nn.Conv2d)
    # layers the kernels do not cover stay PyTorch's
    others = nn.Sequential(
        nn.Conv2d(28, 56, 4, 2, 1, bias=True),  # bias
        nn.Conv2d(28, 56, 4, 2, 1, groups=2, bias=False),  # groups
        nn.Conv2d(2, 28, 4, 2, 1, bias=False),  # too few channels to unfold, not a single one
        nn.Conv2d(1, 28, 3, 1, 1, bias=False),  # a single channel, but not stride 2 with a 4x4 kernel
        nn.Conv2d(28, 56, 4, 2, 1, padding_mode="reflect", bias=False),  # not zero padding
        nn.BatchNorm2d(32),  # a multiple of 16 channels: the channels-last kernel is fast
        nn.BatchNorm2d(40),  # 32 channels or more: cheaper than the two layout copies
        nn.SyncBatchNorm(28),  # not a plain BatchNorm2d
    )
    assert use_cpu_kernels(others) == {}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_networks_compute_the_same_in_float64(channels_last):
    """Generator into discriminator, forward and every gradient, with and without the kernels (the GEMM path only
    acts under bf16; its float64 equality is the test above)."""
    torch.manual_seed(0)
    generator, discriminator = Generator().double(), Discriminator().double()
    if channels_last:
        generator, discriminator = (m.to(memory_format=torch.channels_last) for m in (generator, discriminator))
    fast_g, fast_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    use_cpu_kernels(fast_g)
    use_cpu_kernels(fast_d)
    noise, real = torch.randn(16, 100, dtype=torch.float64), torch.rand(16, 1, 28, 28, dtype=torch.float64)

    def loss_and_grads(g, d):
        loss = d(g(noise)).square().mean() + d(real).mean()
        return loss, torch.autograd.grad(loss, [*g.parameters(), *d.parameters()])

    loss, grads = loss_and_grads(generator, discriminator)
    fast_loss, fast_grads = loss_and_grads(fast_g, fast_d)
    torch.testing.assert_close(fast_loss, loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bf16_uses_the_gemm_and_is_as_accurate_as_onednn():
    """Under bf16 autocast the weight gradients come from the GEMM path, and they are as close to the float64
    gradients as oneDNN's bf16 ones are."""
    torch.manual_seed(0)
    generator = Generator().to(memory_format=torch.channels_last)
    fast = copy.deepcopy(generator)
    use_cpu_kernels(fast)
    exact = copy.deepcopy(generator).double()
    noise = torch.randn(64, 100)

    def grads(model, dtype=None):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is None):
            images = model(noise if dtype is None else noise.to(dtype))
        return images, torch.autograd.grad(images.float().square().mean(), list(model.parameters()))

    _, fast_grads = grads(fast)
    hidden = torch.randn(8, 112, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.main[3](hidden).grad_fn.name() == "_ConvWithGemmWeightGradBackward"
    assert fast.main[3](hidden).grad_fn.name() == "ConvolutionBackward0"  # float32: PyTorch's kernel (faster there)
    _, onednn_grads = grads(generator)
    _, exact_grads = grads(exact, torch.float64)
    for name, ours, theirs, truth in zip(
        [n for n, _ in generator.named_parameters()], fast_grads, onednn_grads, exact_grads, strict=True
    ):
        scale = truth.abs().max().item()
        our_error = (ours.double() - truth).abs().max().item() / scale
        their_error = (theirs.double() - truth).abs().max().item() / scale
        assert our_error <= 2 * their_error + 1e-3, (name, our_error, their_error)


def test_kernels_step_aside_off_the_training_path():
    layer = GemmWeightGradConv2d(28, 56, 4, 2, 1, bias=False)
    x = torch.randn(2, 28, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).grad_fn.name() != "ConvolutionBackward0"
        with torch.no_grad():
            assert layer(x).grad_fn is None
        layer.weight.requires_grad_(False)  # a frozen layer (the G step's discriminator) keeps oneDNN's kernels
        assert layer(x).grad_fn is None
    single = SubpixelGradConv2d(1, 28, 4, 2, 1, bias=False)
    assert single(torch.randn(2, 1, 28, 28)).grad_fn.name() == "ConvolutionBackward0"  # no input gradient wanted
    last = SubpixelConvTranspose2d(28, 1, 4, 2, 1, bias=False)
    shaped = last(torch.randn(2, 28, 14, 14), output_size=[28, 28])  # explicit output sizes: PyTorch's layer
    assert shaped.grad_fn.name() == "ConvolutionBackward0"


def test_the_switch_governs_everything_the_cpu_kernels_do(monkeypatch):
    """--no-cpu-kernels: no layer swapped and no process-wide heap setting; --cpu-kernels: both."""
    from accelerate import Accelerator

    from gan import cpu_kernels
    from gan.config import TrainConfig
    from gan.trainer import build_gan

    heap_settings = []
    monkeypatch.setattr(cpu_kernels, "keep_freed_memory", lambda: heap_settings.append(True) or True)
    accelerator = Accelerator(cpu=True)
    for enabled in (False, True):
        config = TrainConfig(cpu_kernels=enabled, channels_last=True, sync_bn=False)
        gan = build_gan(config, accelerator)
        networks = (gan.generator, gan.discriminator)
        kinds = {type(layer).__module__ for network in networks for layer in network.modules()}
        assert ("gan.cpu_kernels" in kinds) is enabled, kinds
        assert heap_settings == ([True] if enabled else []), heap_settings


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_applies_on_glibc():
    from gan.cpu_kernels import keep_freed_memory

    assert keep_freed_memory()  # glibc accepted both mallopt settings
