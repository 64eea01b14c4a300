"""gan/cpu_kernels.py: the faster CPU kernels compute what PyTorch's own layers compute."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan.cpu_kernels import (
    GemmWeightGradConv2d,
    SubpixelConvTranspose2d,
    SubpixelGradConv2d,
    _ConvWithGemmWeightGrad,
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


@pytest.mark.parametrize("size", [28, 27])  # 27: the input gradient is one larger than the default transposed size
def test_subpixel_input_gradient_of_a_one_channel_convolution(size):
    layer = nn.Conv2d(1, 28, 4, 2, 1, bias=False).double()
    reference = copy.deepcopy(layer)
    assert use_cpu_kernels(layer) == {"": "SubpixelGradConv2d"}
    x = torch.randn(5, 1, size, size, dtype=torch.float64, requires_grad=True)
    out, expected = layer(x), reference(x)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, layer.weight), grad)
    theirs = torch.autograd.grad(expected, (x, reference.weight), grad)
    assert torch.equal(out, expected)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("size", [1, 3])  # 1x1: the matrix product; 3x3: the parent's path
def test_matmul_form_of_a_transposed_convolution(channels_last, size):
    layer = nn.ConvTranspose2d(100, 112, 4, 1, 0, bias=False).double()
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(layer)
    assert use_cpu_kernels(layer) == {"": "MatmulConvTranspose2d"}
    x = torch.randn(7, 100, size, size, dtype=torch.float64, requires_grad=True)
    out, expected = layer(x), reference(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, layer.weight), grad)
    theirs = torch.autograd.grad(expected, (x, reference.weight), grad)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_which_layers_switch_and_state_is_unchanged():
    generator, discriminator = Generator(), Discriminator()
    before = {k: v.clone() for k, v in {**generator.state_dict(), **discriminator.state_dict()}.items()}
    assert use_cpu_kernels(generator) == {
        "main.0": "MatmulConvTranspose2d",
        "main.3": "GemmWeightGradConvTranspose2d",
        "main.6": "GemmWeightGradConvTranspose2d",
        "main.9": "SubpixelConvTranspose2d",
    }
    assert use_cpu_kernels(discriminator) == {
        "main.0": "SubpixelGradConv2d",
        "main.2": "GemmWeightGradConv2d",
        "main.5": "GemmWeightGradConv2d",
        "main.8": "GemmWeightGradConv2d",
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


_PAGE_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from gan.cpu_kernels import keep_freed_memory
    from gan.models import Discriminator, Generator
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    generator, discriminator = Generator(), Discriminator()
    def step():
        loss = discriminator(generator(torch.randn(128, 100))).square().mean()
        loss.backward()
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_ends_the_page_faults_of_each_step():
    def faults_per_step(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.strip())

    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert default > 200, default  # glibc's default returns the activations' memory to the kernel every step
    assert kept < default / 10, (kept, default)
