"""CPU speed-ups for training that leave the model's arithmetic alone, all behind ``--cpu-kernels``.

``enable_cpu_kernels`` is the one entry point and does everything below; nothing here runs when the switch is
off. Measured (benchmarks/bench_train.py, docs/training-speed.md) on 2-core machines: an AMD EPYC with AVX-512
BF16, an Intel Xeon with AMX and AVX-512 BF16, and an AMD EPYC with AVX2 only; faster on each in fp32, and in
bf16 where the CPU has native bf16.

- ``keep_freed_memory``: glibc hands large freed blocks back to the kernel, so every step page-faults its fresh
  activations in again. Keeping them in the heap removes that work.
- ``use_cpu_kernels`` swaps convolution layers for subclasses with the same parameters whose CPU path is faster:
  - under bf16, oneDNN's weight-gradient kernels for these small convolutions run at a fraction of its forward
    speed. The weight gradient is one matrix product of the output gradient with the unfolded (im2col) input,
    which the bf16 GEMM computes faster; the forward and the input gradient stay oneDNN's.
  - a stride-2 transposed convolution to ONE channel (the generator's last layer, and the input gradient of the
    discriminator's first layer) is slow in oneDNN. It equals a stride-1 2x2 convolution to 4 channels followed
    by a pixel shuffle (the sub-pixel form), which oneDNN runs 2-3x faster, in fp32 and bf16 alike.
  - a transposed convolution of a 1x1 input (the generator's first layer), and a convolution whose kernel covers
    its whole input in one position (the discriminator's last layer, 1x1 output), are one matrix product each.
  - oneDNN runs a weight gradient's GEMM with a long inner dimension (the batch's pixels) and a small output on
    the threads poorly; it is taken as two half-length products, summed in fp32.
- PyTorch's channels-last BatchNorm kernel runs the channels past a multiple of 16 one at a time: at 28 channels it
  is about 3x slower than at 32. Under bf16, BatchNorm layers with fewer than 32 channels (not a multiple of 16)
  run channels-first instead, between two layout copies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
import torch.nn.functional as F
from torch import nn

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for its adaptive threshold; the data tensor stays mmapped
_TRIM_THRESHOLD_BYTES = 128 << 20
_MIN_UNFOLDED_CHANNELS = 8  # unfolding a 1-channel tensor is slower than oneDNN's kernel (measured: D's first layer)
_SPLIT_PRODUCT_FROM = 4096  # inner length from which a weight gradient's GEMM is split in two (D2, G6 here; not D5, G3)
_CHANNELS_FIRST_BELOW = 32  # BatchNorm layers this narrow (and not a multiple of 16 wide) run channels-first in bf16


def keep_freed_memory() -> bool:
    """Serve allocations under 32 MiB from the heap and keep up to 128 MiB of freed heap (glibc's ``mallopt``).

    A training step's activations are then reused from the heap instead of being mapped, page-faulted and unmapped
    again each step. Process-wide; returns whether it was applied (False off Linux/glibc: nothing to do there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )


def _unfold(tensor: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            out_size: tuple[int, int]) -> torch.Tensor:
    """im2col: (N, C, H, W) -> (N * out_h * out_w, kh * kw * C), one row per output position, channels fastest."""
    padded = F.pad(tensor, (padding[1], padding[1], padding[0], padding[0]))
    rows = padded.permute(0, 2, 3, 1)  # (N, H, W, C): a view when channels-last
    if not rows.is_contiguous():
        rows = rows.contiguous()
    batch, _, _, channels = rows.shape
    s_n, s_h, s_w, s_c = rows.stride()
    windows = rows.as_strided(
        (batch, *out_size, *kernel, channels), (s_n, stride[0] * s_h, stride[1] * s_w, s_h, s_w, s_c)
    )
    return windows.reshape(-1, kernel[0] * kernel[1] * channels)


def _pixels(tensor: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H * W, C)."""
    return tensor.permute(0, 2, 3, 1).reshape(-1, tensor.shape[1])


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; with a long inner dimension, as two half-length products (one batched call) summed in fp32.

    oneDNN spreads a product with a small output (e.g. 56 x 448) and a long inner dimension (6,272) over the threads
    poorly; two batched halves keep both threads busy (docs/training-speed.md). In bf16
    each half is rounded before their fp32 sum: one rounding more than the single product, well inside bf16's
    precision (tests/test_cpu_kernels.py bounds it against float64).
    """
    inner = a.shape[1]
    if inner < _SPLIT_PRODUCT_FROM or inner % 2:
        return a @ b
    halves = torch.bmm(a.view(a.shape[0], 2, inner // 2).transpose(0, 1), b.view(2, inner // 2, b.shape[1]))
    return halves.sum(0, dtype=torch.promote_types(a.dtype, torch.float32)).to(a.dtype)


class _ConvWithGemmWeightGrad(torch.autograd.Function):
    """conv2d / conv_transpose2d (no bias, groups 1, dilation 1) whose weight gradient is one GEMM."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, transposed):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.transposed = stride, padding, transposed
        conv = F.conv_transpose2d if transposed else F.conv2d
        return conv(x, weight, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, transposed = ctx.stride, ctx.padding, ctx.transposed
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), [1, 1], transposed, [0, 0], 1,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            kernel = tuple(weight.shape[-2:])
            if transposed:  # weight (C_in, C_out, kh, kw): x's pixels against the unfolded output gradient
                columns = _unfold(grad, kernel, stride, padding, tuple(x.shape[-2:]))
                grad_weight = _product(_pixels(x).t(), columns).view(x.shape[1], *kernel, grad.shape[1])
            else:  # weight (C_out, C_in, kh, kw): the output gradient against the unfolded input
                columns = _unfold(x, kernel, stride, padding, tuple(grad.shape[-2:]))
                grad_weight = _product(_pixels(grad).t(), columns).view(grad.shape[1], *kernel, x.shape[1])
            grad_weight = grad_weight.permute(0, 3, 1, 2)  # (.., .., kh, kw), laid out channels-last
        return grad_input, grad_weight, None, None, None


def _subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, 4, 4) transposed-conv weight -> (4, C, 2, 2) conv weight, one output channel per output pixel parity.

    out[2m + b, 2n + d] = sum over a, c in {0, 1} of x[m - a, n - c] . weight[:, 0, 2a + b, 2c + d]; a conv2d of x
    padded by 1 reads x[m + a' - 1], so its tap a' is the kernel row 2 (1 - a') + b (hence the flips).
    """
    channels = weight.shape[0]
    taps = weight.reshape(channels, 2, 2, 2, 2)  # (C, a, b, c, d): kernel row 2a + b, column 2c + d
    return taps.flip(1).flip(3).permute(2, 4, 0, 1, 3).reshape(4, channels, 2, 2)


def subpixel_conv_transpose(x: torch.Tensor, weight: torch.Tensor, padding: int,
                            size: tuple[int, int] | None = None) -> torch.Tensor:
    """``conv_transpose2d(x, weight, stride=2, padding=padding)`` for a (C, 1, 4, 4) weight, in sub-pixel form.

    ``size``: the output's (H, W) where it is one larger than the default (an odd-sized forward input).
    """
    parities = F.conv2d(x, _subpixel_weight(weight), padding=1)  # (N, 4, H + 1, W + 1)
    full = F.pixel_shuffle(parities, 2)  # (N, 1, 2H + 2, 2W + 2): the output before its padding is cropped
    height, width = size or (full.shape[-2] - 2 * padding, full.shape[-1] - 2 * padding)
    return full[:, :, padding : padding + height, padding : padding + width]


class _SubpixelConvTranspose(torch.autograd.Function):
    """conv_transpose2d to 1 channel (stride 2, 4x4) in sub-pixel form; its backward is oneDNN's, fast here."""

    @staticmethod
    def forward(ctx, x, weight, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return subpixel_conv_transpose(x, weight, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [2, 2], [ctx.padding, ctx.padding], [1, 1], True, [0, 0], 1, mask
        )
        return grad_input, grad_weight, None


class _ConvWithSubpixelInputGrad(torch.autograd.Function):
    """conv2d of a 1-channel input (stride 2, 4x4 kernel) whose input gradient is taken in sub-pixel form."""

    @staticmethod
    def forward(ctx, x, weight, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, stride=2, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = subpixel_conv_transpose(grad, weight, ctx.padding, tuple(x.shape[-2:]))
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [2, 2], [ctx.padding, ctx.padding], [1, 1], False, [0, 0], 1,
                [False, True, False],
            )[1]
        return grad_input, grad_weight, None


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a convolution computes in: autocast's where it is on, else the weight's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _apply_as_autocast_would(function: type[torch.autograd.Function], x: torch.Tensor, weight: torch.Tensor,
                             *args) -> torch.Tensor:
    """``function`` on x and weight cast as autocast would cast a convolution's, with autocast off inside it."""
    dtype = _compute_dtype(x, weight)
    with torch.autocast(x.device.type, enabled=False):
        return function.apply(x.to(dtype), weight.to(dtype), *args)


class GemmWeightGradConv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient under bf16 on CPU is one GEMM; otherwise exactly nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _gemm_forward(self, x)
        return super().forward(x) if out is None else out


class GemmWeightGradConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose weight gradient under bf16 on CPU is one GEMM; otherwise exactly the parent."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        out = _gemm_forward(self, x) if output_size is None else None
        return super().forward(x, output_size) if out is None else out


def _gemm_forward(layer: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor | None:
    """The GEMM-weight-gradient path where it applies (CPU, bf16, a weight gradient to compute), else None."""
    if not (x.device.type == "cpu" and layer.weight.requires_grad and torch.is_grad_enabled()):
        return None
    if _compute_dtype(x, layer.weight) != torch.bfloat16:  # fp32 GEMMs lose to oneDNN here (measured)
        return None
    return _apply_as_autocast_would(_ConvWithGemmWeightGrad, x, layer.weight, layer.stride, layer.padding,
                                    layer.transposed)


class SubpixelGradConv2d(nn.Conv2d):
    """nn.Conv2d (1 input channel, stride 2, 4x4) whose input gradient on CPU is taken in sub-pixel form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not (x.requires_grad and torch.is_grad_enabled()):
            return super().forward(x)
        return _apply_as_autocast_would(_ConvWithSubpixelInputGrad, x, self.weight, self.padding[0])


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (to 1 channel, stride 2, 4x4) computed in sub-pixel form on CPU."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or output_size is not None:
            return super().forward(x, output_size)
        return _apply_as_autocast_would(_SubpixelConvTranspose, x, self.weight, self.padding[0])


class MatmulConvTranspose2d(GemmWeightGradConvTranspose2d):
    """nn.ConvTranspose2d without padding: on a 1x1 input (the generator's first layer) it is one matrix product."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or x.shape[-2:] != (1, 1) or output_size is not None:
            return super().forward(x, output_size)
        weight = self.weight  # (C_in, C_out, kh, kw); a view below when channels-last
        columns = x.flatten(1) @ weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (N, kh * kw * C_out)
        return columns.view(len(x), *weight.shape[2:], weight.shape[1]).permute(0, 3, 1, 2)  # channels-last


class MatmulConv2d(GemmWeightGradConv2d):
    """nn.Conv2d to one channel (a discriminator's head): where its kernel covers the whole input in one position
    (a 1x1 output) it is one matrix product of the pixels with the kernel taps they meet; else GemmWeightGradConv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        height, width = x.shape[-2:]
        rows, cols = min(height, kh - ph), min(width, kw - pw)  # the input pixels under the kernel (padding aside)
        one_position = 0 <= height + 2 * ph - kh < sh and 0 <= width + 2 * pw - kw < sw
        if x.device.type != "cpu" or not one_position or rows < 1 or cols < 1:
            return super().forward(x)
        taps = self.weight[:, :, ph : ph + rows, pw : pw + cols]  # (C_out, C_in, rows, cols)
        pixels = x[:, :, :rows, :cols].permute(0, 2, 3, 1).reshape(len(x), -1)  # a view when channels-last
        out = pixels @ taps.permute(0, 2, 3, 1).reshape(len(taps), -1).t()  # (N, C_out)
        return out.view(len(x), -1, 1, 1)


class _ToLayout(torch.autograd.Function):
    """``x`` copied into ``layout``; its gradient goes back in x's own layout."""

    @staticmethod
    def forward(ctx, x, layout, back):
        ctx.back = back
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.back), None, None


class ChannelsFirstBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that, training under bf16 on a channels-last CPU tensor, normalizes a channels-first copy.

    PyTorch's channels-last kernel handles the channels past a multiple of 16 one at a time, so for such layers the
    two copies cost less than they save (docs/training-speed.md). The arithmetic is PyTorch's BatchNorm either way;
    input, output and gradients keep the caller's layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return super().forward(x)
        planar = _ToLayout.apply(x, torch.contiguous_format, torch.channels_last)
        return _ToLayout.apply(super().forward(planar), torch.channels_last, torch.contiguous_format)


def _plain(layer: nn.Conv2d | nn.ConvTranspose2d) -> bool:
    return (
        layer.bias is None and layer.groups == 1 and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str) and layer.output_padding == (0, 0)
    )


def _kernel_for(layer: nn.Module) -> type[nn.Module] | None:
    """Which faster subclass serves ``layer`` (None: it stays as it is)."""
    if type(layer) is nn.BatchNorm2d:
        narrow = layer.num_features < _CHANNELS_FIRST_BELOW and layer.num_features % 16
        return ChannelsFirstBatchNorm2d if narrow else None
    if type(layer) not in (nn.Conv2d, nn.ConvTranspose2d) or not _plain(layer):
        return None
    single_channel = layer.out_channels == 1 if layer.transposed else layer.in_channels == 1
    subpixel_shape = (
        layer.kernel_size == (4, 4) and layer.stride == (2, 2) and layer.padding[0] == layer.padding[1] >= 1
    )
    if single_channel and subpixel_shape:
        return SubpixelConvTranspose2d if layer.transposed else SubpixelGradConv2d
    if layer.transposed and layer.padding == (0, 0):
        return MatmulConvTranspose2d  # a matrix product on 1x1 inputs; the GEMM weight gradient otherwise
    # the unfolded tensor is the input of a convolution and the output gradient of a transposed one
    unfolded_channels = layer.out_channels if layer.transposed else layer.in_channels
    if unfolded_channels >= _MIN_UNFOLDED_CHANNELS:
        if layer.transposed:
            return GemmWeightGradConvTranspose2d
        return MatmulConv2d if layer.out_channels == 1 else GemmWeightGradConv2d
    return None


def use_cpu_kernels(module: nn.Module) -> dict[str, str]:
    """Switch ``module``'s convolutions and narrow BatchNorm layers to the faster CPU kernels, in place.

    Returns {layer name: kernel class name}. Parameters, state-dict keys and outputs are unchanged (the
    subclasses add no state and fall back to the parent's forward off CPU); only how gradients (or, for the
    single-channel layers, the output) are computed differs.
    """
    switched = {}
    for name, layer in module.named_modules():
        kernel = _kernel_for(layer)
        if kernel is not None:
            layer.__class__ = kernel
            switched[name] = kernel.__name__
    return switched


def enable_cpu_kernels(*modules: nn.Module) -> None:
    """Turn on everything this module does: the faster layers in ``modules`` and the heap setting (process-wide)."""
    keep_freed_memory()
    for module in modules:
        use_cpu_kernels(module)
