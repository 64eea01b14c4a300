"""The training run: accelerator, data, models, the loop, and the run folder it leaves behind."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from tqdm.auto import tqdm

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, save_generator, versions, write_json_atomic
from gan.config import TrainConfig
from gan.data import DataError, KMNISTData, ShardedBatches, ensure_files, load_kmnist, to_uint8
from gan.models import Discriminator, Generator
from gan.sync_batchnorm import convert_sync_batchnorm
from gan.training import GAN, METRIC_NAMES, fixed_noise, skipped_steps, step_noise, train_step


class SetupError(ValueError):
    """A setting that cannot work with the processes or devices this run was launched on (exit status 2)."""


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    sample_grids: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, uint8 [64, 28, 28])
    skipped_steps: int = 0


def make_accelerator(config: TrainConfig) -> Accelerator:
    # broadcast_buffers=False: DDP's default re-broadcasts BatchNorm buffers in place at every forward, which breaks
    # the discriminator's second forward of a step ("modified by an inplace operation"). Synchronized BatchNorm
    # keeps the running statistics identical across processes anyway.
    # (Newer torch calls the flag forward_sync_buffers and warns; the GPU images' torch 2.11 only knows this one.)
    warnings.filterwarnings("ignore", message=".*`broadcast_buffers` is deprecated", category=FutureWarning)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    # Without CUDA, train on CPU: the same launch config then runs gloo processes on a CPU-only machine.
    cpu = config.cpu or not torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, kwargs_handlers=[ddp])


def setup_problems(config: TrainConfig, accelerator: Accelerator) -> list[str]:
    problems = []
    if config.batch_size % accelerator.num_processes:
        problems.append(
            f"--batch-size {config.batch_size} is the global batch and must divide by the "
            f"{accelerator.num_processes} processes; use a multiple of {accelerator.num_processes} "
            f"(e.g. {config.batch_size - config.batch_size % accelerator.num_processes or accelerator.num_processes})"
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        problems.append(
            "--mixed-precision fp16 needs a GPU (loss-scaled fp16 autocast); on CPU use --mixed-precision bf16"
        )
    return problems


def resolve_run_dir(config: TrainConfig, accelerator: Accelerator) -> Path:
    """The run folder, named the same on every process (the main process picks the timestamp)."""
    name = [config.run_name or datetime.now().strftime("%Y%m%d-%H%M%S")]
    broadcast_object_list(name)
    return Path(config.output_dir) / name[0]


def load_data(config: TrainConfig, accelerator: Accelerator) -> KMNISTData:
    """Download/verify on the main process only, then every process loads the verified files.

    A data error on the main process reaches every process, so none is left waiting at a barrier.
    """
    error = [None]
    if accelerator.is_main_process:
        try:
            ensure_files(config.data_dir, config.split, download=not config.no_download)
        except DataError as caught:
            error = [str(caught)]
    broadcast_object_list(error)
    if error[0] is not None:
        raise DataError(error[0])
    return load_kmnist(config.data_dir, config.split, download=False)


def build_gan(config: TrainConfig, accelerator: Accelerator, sync_bn: bool) -> GAN:
    torch.manual_seed(config.seed)  # same initial weights on every process (DDP also broadcasts them)
    generator = Generator(config.latent_dim, config.base_width)
    discriminator = Discriminator(config.base_width)
    dtype = getattr(torch, config.dtype)
    generator, discriminator = generator.to(dtype), discriminator.to(dtype)  # initialised in fp32 either way
    if sync_bn:
        generator = convert_sync_batchnorm(generator, accelerator.device)
        discriminator = convert_sync_batchnorm(discriminator, accelerator.device)
    betas = (config.beta1, config.beta2)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    prepared = accelerator.prepare(generator, discriminator, generator_optimizer, discriminator_optimizer)
    return GAN(*prepared)


def run_metadata(
    config: TrainConfig, accelerator: Accelerator, run_dir: Path, sync_bn: bool
) -> dict[str, Any]:
    return {
        **config.to_dict(),
        "run_name": run_dir.name,
        "world_size": accelerator.num_processes,
        "device": accelerator.device.type,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "sync_bn": sync_bn,
        "generator_weights": "trained",
        "final_step": None,
        "versions": versions(),
    }


class Progress:
    """A progress bar on a terminal, plain log lines elsewhere; main process only."""

    def __init__(self, total: int, enabled: bool, log_every: int):
        self.interactive = enabled and sys.stdout.isatty()
        self.enabled = enabled
        self.log_every = log_every
        self.total = total
        self.bar = tqdm(total=total, disable=not self.interactive, dynamic_ncols=True, unit="step")

    def update(self, step: int, epoch: int, metrics: dict[str, float], images_per_second: float) -> None:
        if self.interactive:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                epoch=epoch,
                d_loss=f"{metrics['d_loss']:.3f}",
                g_loss=f"{metrics['g_loss']:.3f}",
                img_s=f"{images_per_second:.0f}",
                refresh=False,
            )
        elif self.enabled:
            print(
                f"step {step}/{self.total} epoch {epoch} d_loss {metrics['d_loss']:.4f} "
                f"g_loss {metrics['g_loss']:.4f} D(x) {metrics['d_real']:.3f} D(G(z)) {metrics['d_fake']:.3f} "
                f"{images_per_second:.0f} img/s",
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


@torch.no_grad()
def sample_grid(generator: torch.nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] from the generator in eval mode (running BatchNorm statistics, no cross-process work)."""
    was_training = generator.training
    generator.eval()
    images = generator(noise)
    generator.train(was_training)
    return to_uint8(images[:, 0]).cpu()


def train(config: TrainConfig) -> RunResult:
    accelerator = make_accelerator(config)
    problems = setup_problems(config, accelerator)
    if problems:
        raise SetupError("\n".join(f"  - {p}" for p in problems))
    sync_bn = accelerator.num_processes > 1 if config.sync_bn is None else config.sync_bn
    run_dir = resolve_run_dir(config, accelerator)
    if accelerator.is_main_process and (run_dir / CONFIG_FILE).exists():
        raise SetupError(f"  - {run_dir} already holds a run; choose another --run-name or --output-dir")

    data = load_data(config, accelerator)
    dtype = getattr(torch, config.dtype)
    batches = ShardedBatches(
        data.images.to(accelerator.device),
        config.batch_size,
        config.seed,
        accelerator.process_index,
        accelerator.num_processes,
        dtype,
    )
    total_steps = batches.steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    gan = build_gan(config, accelerator, sync_bn)
    metadata = run_metadata(config, accelerator, run_dir, sync_bn)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, metadata)

    result = RunResult(run_dir, 0)
    grid_noise = fixed_noise(config.seed, config.latent_dim).to(accelerator.device, dtype)
    progress = Progress(total_steps, accelerator.is_main_process, config.log_every)
    pending: list[torch.Tensor] = []  # per-step metrics still on the device; read back at log points only
    interval_start, interval_steps = time.perf_counter(), 0
    step = 0
    for epoch in range(config.epochs):
        for real in batches.epoch(epoch):
            if step >= total_steps:
                break
            noise = step_noise(
                config.seed,
                step,
                config.batch_size,
                config.latent_dim,
                accelerator.process_index,
                accelerator.num_processes,
            ).to(accelerator.device, dtype)
            pending.append(accelerator.reduce(train_step(accelerator, gan, real, noise), reduction="mean"))
            result.skipped_steps += skipped_steps(gan)
            step += 1
            interval_steps += 1
            if accelerator.is_main_process and (step % config.sample_every == 0 or step == total_steps):
                result.sample_grids.append(
                    (step, sample_grid(accelerator.unwrap_model(gan.generator), grid_noise))
                )
            if step % config.log_every == 0 or step == total_steps or progress.interactive:
                values = torch.stack(pending).float().cpu().tolist()
                first = step - len(values) + 1
                result.history.extend(
                    {"step": first + i, "epoch": epoch, **dict(zip(METRIC_NAMES, row, strict=True))}
                    for i, row in enumerate(values)
                )
                pending.clear()
                elapsed = time.perf_counter() - interval_start
                progress.update(step, epoch, result.history[-1], interval_steps * config.batch_size / elapsed)
                interval_start, interval_steps = time.perf_counter(), 0
    progress.close()
    result.steps = step

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_generator(
            accelerator.unwrap_model(gan.generator),
            run_dir / GENERATOR_FILE,
            metadata={"run_name": run_dir.name, "step": str(step)},
        )
        metadata.update(final_step=step, skipped_steps=result.skipped_steps)
        write_json_atomic(run_dir / CONFIG_FILE, metadata)
        print(
            f"saved {run_dir / GENERATOR_FILE} after {step} steps"
            + (f" ({result.skipped_steps} fp16 optimizer steps skipped)" if result.skipped_steps else ""),
            flush=True,
        )
    accelerator.end_training()
    return result
