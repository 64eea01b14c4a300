"""The training device: the accelerator, what this CPU can do, and the defaults that depend on the device.

Device-dependent settings (channels-last, the CPU kernels, synchronized BatchNorm, the precision) are resolved
here once, into the config that the run records; the rest of the code reads plain booleans.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import warnings
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, parse_flag_from_env

from gan.config import SetupError, TrainConfig

# CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic; without them oneDNN emulates bf16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
EMULATED_BF16_WARNING = (
    "warning: --mixed-precision bf16 on a CPU without native bf16 (no AVX512_BF16 or AMX; this one: {capability}). "
    "bf16 is emulated here and trains about 10x slower than fp32 (measured on a 2-core AVX2 AMD EPYC: ~130 vs "
    "~1,100 images/s). Use --mixed-precision no (fp32) on this machine."
)


def make_accelerator(config: TrainConfig) -> Accelerator:
    # broadcast_buffers=False: DDP's default re-broadcasts BatchNorm buffers in place at every forward, which breaks
    # the discriminator's second forward of a step ("modified by an inplace operation"). Synchronized BatchNorm
    # keeps the running statistics identical across processes anyway.
    warnings.filterwarnings("ignore", message=".*`broadcast_buffers` is deprecated", category=FutureWarning)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    # A dead peer makes the others fail after dist_timeout instead of hanging (torchrun then restarts the group).
    # accelerate passes on only what differs from its defaults (backend "nccl"), so None keeps its own choice
    process_group = InitProcessGroupKwargs(backend=config.dist_backend or "nccl",
                                           timeout=timedelta(seconds=config.dist_timeout))
    # CPU: --cpu, a launch config with use_cpu (accelerate launch passes it on as ACCELERATE_USE_CPU), or no CUDA.
    cpu = config.cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, kwargs_handlers=[ddp, process_group])


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matrix products and cuDNN convolutions on NVIDIA GPUs: on, or off for full fp32 everywhere."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of Linux's /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux reports them, or None where they are unknown."""
    flags = _cpuinfo().get("flags") or _cpuinfo().get("Features")
    return frozenset(flags.split()) if flags else None


def cpu_description() -> dict[str, Any]:
    """What config.json records of the CPU: its model, PyTorch's kernel capability, whether bf16 is native."""
    flags = cpu_flags()
    return {
        "model": _cpuinfo().get("model name") or platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": None if flags is None else any(flag in flags for flag in NATIVE_BF16_FLAGS),
    }


def setup_problems(config: TrainConfig, accelerator: Accelerator) -> list[str]:
    """What cannot work with the processes and devices of this launch."""
    problems = []
    if config.batch_size % accelerator.num_processes:
        problems.append(
            f"--batch-size {config.batch_size} is the global batch and must divide by the "
            f"{accelerator.num_processes} processes; use a multiple of {accelerator.num_processes} "
            f"(e.g. {config.batch_size - config.batch_size % accelerator.num_processes or accelerator.num_processes})"
        )
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # set by every torch.distributed launcher
    gloo = config.dist_backend == "gloo"
    if accelerator.device.type == "cuda" and local_processes > torch.cuda.device_count() and not gloo:
        gpus = torch.cuda.device_count()
        problems.append(
            f"{local_processes} processes on this machine but {gpus} GPU(s): two processes would share a GPU, "
            f"which NCCL refuses. Pass --num_processes {gpus} (per machine), or train on CPU with "
            f"--config_file launch/cpu_multi_process.yaml (or share the GPU over gloo: --dist-backend gloo)"
        )
    if config.dist_backend == "nccl" and accelerator.device.type != "cuda":
        problems.append(f"--dist-backend nccl needs CUDA GPUs; this launch trains on {accelerator.device.type}")
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        problems.append(
            "--mixed-precision fp16 needs a GPU (loss-scaled fp16 autocast); on CPU use --mixed-precision bf16"
        )
    return problems


def resolve_for_device(config: TrainConfig, accelerator: Accelerator) -> TrainConfig:
    """``config`` with every device-dependent default decided for this launch; SetupError if it cannot work.

    On CPU, channels-last and the CPU kernels default to on (measured faster on every CPU tried:
    docs/training-speed.md); on GPU they stay off. Synchronized BatchNorm defaults to on with several processes.
    Warns (main process) when bf16 would be emulated on this CPU.
    """
    problems = setup_problems(config, accelerator)
    if problems:
        raise SetupError("\n".join(f"  - {p}" for p in problems))
    on_cpu = accelerator.device.type == "cpu"
    resolved = dataclasses.replace(
        config,
        mixed_precision=accelerator.mixed_precision,
        channels_last=on_cpu if config.channels_last is None else config.channels_last,
        cpu_kernels=on_cpu if config.cpu_kernels is None else config.cpu_kernels,
        sync_bn=accelerator.num_processes > 1 if config.sync_bn is None else config.sync_bn,
    )
    cpu = cpu_description()
    if on_cpu and resolved.mixed_precision == "bf16" and cpu["native_bf16"] is False and accelerator.is_main_process:
        print(EMULATED_BF16_WARNING.format(capability=cpu["capability"]), file=sys.stderr, flush=True)
    return resolved
