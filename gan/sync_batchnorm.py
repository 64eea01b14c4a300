"""Synchronized BatchNorm for every backend: PyTorch's on CUDA, this project's own on CPU (gloo).

``nn.SyncBatchNorm`` refuses CPU tensors ("SyncBatchNorm expected input tensor to be on GPU"). For CPU process
groups, :class:`CPUSyncBatchNorm` all-reduces per-channel count, sum and sum of squares in the forward pass, and the
per-channel sums of the gradient terms in the backward pass, so the gradient also flows through the global batch
statistics. Both layers keep ``BatchNorm2d``'s parameters and buffers under the same names, so a converted model's
state dict loads straight into the plain model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def _global_mean_var(x: torch.Tensor, group: dist.ProcessGroup | None):
    """Per-channel mean and biased variance over every process's batch, and the global element count.

    Each process contributes its count, mean and centred sum of squares, combined exactly (Chan et al.); the
    textbook E[x^2] - E[x]^2 from all-reduced sums loses ~1e-4 relative precision in fp32 when |mean| >> std.
    """
    channels = x.shape[1]
    local_var, local_mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    local_count = x.numel() // channels
    local = torch.cat([x.new_full((1,), float(local_count)), local_mean, local_var * local_count]).double()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    stats = torch.stack(gathered)  # (world, 1 + 2C): count, mean, M2
    counts, means, m2 = stats[:, :1], stats[:, 1 : 1 + channels], stats[:, 1 + channels :]
    count = counts.sum()
    mean = (counts * means).sum(0) / count
    m2_total = (m2 + counts * (means - mean) ** 2).sum(0)
    return mean.to(x.dtype), (m2_total / count).to(x.dtype), count.to(x.dtype)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        # x: (N, C, H, W); statistics in fp32 at least (as autocast keeps BatchNorm in fp32), fp64 stays fp64
        input_dtype = x.dtype
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        mean, var, count = _global_mean_var(x, group)  # biased variance, used to normalize
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            # nn.BatchNorm2d's update: momentum average with the unbiased variance of the (global) batch
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * (count / (count - 1).clamp_min(1))
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        x_hat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        w = weight.to(x.dtype) if weight is not None else torch.ones_like(mean)
        b = bias.to(x.dtype) if bias is not None else torch.zeros_like(mean)
        ctx.save_for_backward(x_hat, invstd, w)
        ctx.count = count
        ctx.group = group
        ctx.has_affine = weight is not None
        return (x_hat * w[None, :, None, None] + b[None, :, None, None]).to(input_dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x_hat, invstd, w = ctx.saved_tensors
        grad_output_dtype = grad_output.dtype
        grad = grad_output.to(x_hat.dtype)
        channels = grad.shape[1]
        # Local per-channel sums; their global totals couple every process's inputs through mean and variance.
        sum_grad = grad.sum(dim=(0, 2, 3))
        sum_grad_xhat = (grad * x_hat).sum(dim=(0, 2, 3))
        totals = _all_reduce_sum(torch.cat([sum_grad, sum_grad_xhat]), ctx.group)
        mean_grad = totals[:channels] / ctx.count
        mean_grad_xhat = totals[channels:] / ctx.count
        grad_input = (w * invstd)[None, :, None, None] * (
            grad - mean_grad[None, :, None, None] - x_hat * mean_grad_xhat[None, :, None, None]
        )
        # Parameter gradients stay local: DDP averages them across processes like any other parameter's.
        grad_weight = sum_grad_xhat if ctx.has_affine else None
        grad_bias = sum_grad if ctx.has_affine else None
        return grad_input.to(grad_output_dtype), grad_weight, grad_bias, None, None, None, None, None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics span all processes of ``process_group`` (any backend)."""

    def __init__(self, *args, process_group: dist.ProcessGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = (
            dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1
        )
        if not (self.training and distributed):
            return super().forward(x)
        if self.momentum is None:
            raise ValueError(
                "CPUSyncBatchNorm needs a numeric momentum (cumulative averaging is not supported)"
            )
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return _SyncBatchNormFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.eps,
            self.momentum,
            self.process_group,
        )


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every ``BatchNorm2d`` for the synchronized layer that works on ``device`` (before ``prepare``)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_batchnorm(module)


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):  # subclasses too
        synced = CPUSyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=module.running_mean.device,
            dtype=module.running_mean.dtype,
        )
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _replace_batchnorm(child))
    return module

