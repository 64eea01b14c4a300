"""The training run: accelerator, data, models, the loop, and the run folder it leaves behind."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list
from tqdm.auto import tqdm

from gan import pictures
from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, read_config, save_generator, versions, write_json_atomic
from gan.checkpointing import CheckpointError, UnsafeCheckpointError, checkpoint_dirs, load_checkpoint, save_checkpoint
from gan.config import TrainConfig
from gan.cpu_kernels import keep_freed_memory, use_cpu_kernels
from gan.data import DataError, KMNISTData, ShardedBatches, ensure_files, load_kmnist, to_uint8
from gan.ema import GeneratorEMA
from gan.models import Discriminator, Generator
from gan.preemption import StopRequest
from gan.sync_batchnorm import convert_sync_batchnorm
from gan.tracking import Tracker
from gan.training import GAN, METRIC_NAMES, fixed_noise, skipped_steps, step_noise, train_step

TRAINED_GENERATOR_FILE = "generator_trained.safetensors"
# Settings a resumed run takes from its checkpointed config: changing them would not continue the same run.
RESUME_FIXED = ("data_dir", "split", "batch_size", "real_label", "lr", "beta1", "beta2", "latent_dim", "base_width",
                "seed", "dtype", "ema_decay", "sample_every", "mixed_precision", "sync_bn", "run_name", "output_dir")


class SetupError(ValueError):
    """A setting that cannot work with the processes or devices this run was launched on (exit status 2)."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; no checkpoint of the broken weights is written."""


class PreemptedError(Exception):
    """The run stopped on SIGTERM/SIGINT after writing a checkpoint; ``--resume latest`` continues it."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"stopped by signal {signum} after writing {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


@dataclass
class TrainerState:
    """The trainer's own counters and records: checkpointed, restored exactly on resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_steps: int = 0
    wandb_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    grid_steps: list[int] = field(default_factory=list)


@dataclass
class RunResult:
    run_dir: Path
    state: TrainerState


def make_accelerator(config: TrainConfig) -> Accelerator:
    # broadcast_buffers=False: DDP's default re-broadcasts BatchNorm buffers in place at every forward, which breaks
    # the discriminator's second forward of a step ("modified by an inplace operation"). Synchronized BatchNorm
    # keeps the running statistics identical across processes anyway.
    # (Newer torch calls the flag forward_sync_buffers and warns; the GPU images' torch 2.11 only knows this one.)
    warnings.filterwarnings("ignore", message=".*`broadcast_buffers` is deprecated", category=FutureWarning)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    # A dead peer makes the others fail after dist_timeout instead of hanging (torchrun then restarts the group).
    process_group = InitProcessGroupKwargs(timeout=timedelta(seconds=config.dist_timeout))
    # Without CUDA, train on CPU: the same launch config then runs gloo processes on a CPU-only machine.
    cpu = config.cpu or not torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision,
                       kwargs_handlers=[ddp, process_group])


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


def uses_channels_last(config: TrainConfig, accelerator: Accelerator) -> bool:
    """--channels-last, else on for CPU training (benchmarks/bench_train.py: faster in fp32 and bf16 there)."""
    return config.channels_last if config.channels_last is not None else accelerator.device.type == "cpu"


def uses_cpu_kernels(config: TrainConfig, accelerator: Accelerator) -> bool:
    """--cpu-kernels, else on for CPU training (gan/cpu_kernels.py; their layers act only on CPU tensors)."""
    return config.cpu_kernels if config.cpu_kernels is not None else accelerator.device.type == "cpu"


def build_gan(config: TrainConfig, accelerator: Accelerator, sync_bn: bool) -> GAN:
    torch.manual_seed(config.seed)  # same initial weights on every process (DDP also broadcasts them)
    generator = Generator(config.latent_dim, config.base_width)
    discriminator = Discriminator(config.base_width)
    dtype = getattr(torch, config.dtype)
    generator, discriminator = generator.to(dtype), discriminator.to(dtype)  # initialised in fp32 either way
    if uses_channels_last(config, accelerator):  # conv outputs follow the weights' layout; [B, 1, 28, 28] is both
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    if uses_cpu_kernels(config, accelerator):
        use_cpu_kernels(generator)
        use_cpu_kernels(discriminator)
    if sync_bn:
        generator = convert_sync_batchnorm(generator, accelerator.device)
        discriminator = convert_sync_batchnorm(discriminator, accelerator.device)
    # one fused kernel per optimizer step on CPU (measured: 0.4 vs 1.0 ms for both); GPUs keep the default
    adam = {"betas": (config.beta1, config.beta2), "fused": accelerator.device.type == "cpu" or None}
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, **adam)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator, **adam)
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
        "channels_last": uses_channels_last(config, accelerator),
        "cpu_kernels": uses_cpu_kernels(config, accelerator),
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

    def note(self, message: str) -> None:
        if self.interactive:
            self.bar.write(message)
        elif self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        self.bar.close()


def make_evaluator(config: TrainConfig):
    from gan.evaluation import Evaluator  # torchmetrics/scipy: only when evaluating

    # 20 KID subsets instead of 100: still unbiased, a little noisier, ~3x faster (measured: 2-3 s for 2,000 samples)
    return Evaluator(config.data_dir, config.split, device="cpu", kid_subsets=20, download=False)


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode (running BatchNorm statistics, no cross-process work), then back as it was."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def evaluate_samples(evaluator, generator: torch.nn.Module, config: TrainConfig) -> dict[str, float]:
    """Sample-quality metrics of ``generator`` (eval mode, fixed seeded noise) as 'eval/<name>' entries."""
    from gan.evaluation import generate, torch_sampler

    start = time.perf_counter()
    with eval_mode(generator):
        images = generate(torch_sampler(generator), config.latent_dim, config.eval_samples, seed=config.seed + 2)
    metrics = evaluator.evaluate(images)
    metrics["seconds"] = time.perf_counter() - start
    return {f"eval/{name}": float(value) for name, value in metrics.items()}


@torch.no_grad()
def sample_images(generator: torch.nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] from the generator in eval mode, for the picture grids."""
    with eval_mode(generator):
        return to_uint8(generator(noise)[:, 0]).cpu()


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint ``--resume`` names (None: start fresh). Raises SetupError when there is nothing to resume."""
    if config.resume is None:
        return None
    if config.resume in ("latest", "auto"):
        output = Path(config.output_dir)
        if config.run_name:
            runs = [output / config.run_name]
        else:
            runs = sorted((p for p in output.glob("*") if checkpoint_dirs(p)), key=lambda p: p.stat().st_mtime)[-1:]
        if runs and checkpoint_dirs(runs[0]):
            return runs[0]
        if config.resume == "auto":
            return None
        where = output / config.run_name if config.run_name else output
        raise SetupError(f"  - --resume latest: no checkpoint under {where}; start a new run without --resume")
    path = Path(config.resume)
    if path.is_dir() and (checkpoint_dirs(path) or (path.parent.name == "checkpoints")):
        return path
    raise SetupError(f"  - --resume {config.resume}: not a run folder with checkpoints nor a checkpoint folder")


def resumed_config(config: TrainConfig, target: Path) -> TrainConfig:
    """The run's saved settings for everything that defines it; this launch's for the rest (epochs, ...)."""
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else target
    saved = read_config(run_dir)
    values = config.to_dict()
    values.update({k: saved[k] for k in RESUME_FIXED if k in saved})
    values.update(run_name=run_dir.name, output_dir=str(run_dir.parent))
    return TrainConfig(**values)


def restore(accelerator: Accelerator, target: Path) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """Load the checkpoint ``target`` names (a checkpoint, or a run's newest good one, falling back past damage)."""
    candidates = [target] if target.parent.name == "checkpoints" else list(reversed(checkpoint_dirs(target)))
    for index, candidate in enumerate(candidates):
        try:
            state, tensors = load_checkpoint(accelerator, candidate)
            return candidate, state, tensors
        except UnsafeCheckpointError:
            raise
        except CheckpointError as error:
            if accelerator.is_main_process:
                later = " ; trying the previous one" if index + 1 < len(candidates) else ""
                print(f"warning: checkpoint {candidate} is damaged: {error}{later}", file=sys.stderr, flush=True)
    raise CheckpointError(f"no readable checkpoint in {target}")


def _training_tensors(ema: GeneratorEMA | None, grid_noise: torch.Tensor, grids: list[torch.Tensor],
                      real_samples: torch.Tensor | None) -> dict[str, torch.Tensor]:
    tensors = {"fixed_noise": grid_noise.float()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
        tensors["ema.updates"] = torch.tensor(ema.updates)
    if grids:
        tensors["grids"] = torch.stack(grids)
    if real_samples is not None:
        tensors["real_samples"] = real_samples
    return tensors


def train(config: TrainConfig) -> RunResult:
    resume_target = find_resume_checkpoint(config)
    if resume_target is not None:
        config = resumed_config(config, resume_target)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    accelerator = make_accelerator(config)
    problems = setup_problems(config, accelerator)
    if problems:
        raise SetupError("\n".join(f"  - {p}" for p in problems))
    sync_bn = accelerator.num_processes > 1 if config.sync_bn is None else config.sync_bn
    run_dir = resolve_run_dir(config, accelerator)
    # (--resume auto restarts a run that died before its first checkpoint from scratch, in the same folder)
    if resume_target is None and config.resume != "auto" and accelerator.is_main_process \
            and (run_dir / CONFIG_FILE).exists():
        raise SetupError(f"  - {run_dir} already holds a run; choose another --run-name, or continue it with "
                         f"--resume latest --run-name {run_dir.name}")

    device = accelerator.device
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on each step's fresh activations (gan/cpu_kernels.py)
    data = load_data(config, accelerator)
    dtype = getattr(torch, config.dtype)
    batches = ShardedBatches(data.images.to(device), config.batch_size, config.seed,
                             accelerator.process_index, accelerator.num_processes, dtype)
    total_steps = batches.steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    checkpoint_every = config.checkpoint_every or batches.steps_per_epoch
    eval_every = batches.steps_per_epoch if config.eval_every is None else config.eval_every

    gan = build_gan(config, accelerator, sync_bn)
    generator = accelerator.unwrap_model(gan.generator)
    ema = GeneratorEMA(generator, config.ema_decay, device) if config.ema_decay > 0 else None
    grid_noise = fixed_noise(config.seed, config.latent_dim).to(device, dtype)
    state, grids, real_samples = TrainerState(), [], None
    if resume_target is not None:
        checkpoint, saved, tensors = restore(accelerator, resume_target)
        state = TrainerState(**saved)
        grids = list(tensors["grids"]) if "grids" in tensors else []
        real_samples = tensors.get("real_samples")
        if ema is not None:
            ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.main")})
            ema.updates = int(tensors["ema.updates"])
        if accelerator.is_main_process:
            print(f"resumed from {checkpoint} at step {state.step}", flush=True)

    metadata = run_metadata(config, accelerator, run_dir, sync_bn)
    metadata["generator_weights"] = "ema" if ema is not None else "trained"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, metadata)
    tracker = Tracker(accelerator, config.report_to, run_dir, config.wandb_project, config.wandb_entity,
                      config.wandb_mode, metadata, state.wandb_run_id)
    state.wandb_run_id = tracker.run_id
    sampler = ema.model if ema is not None else generator  # what the grids and generator.safetensors show
    evaluator = make_evaluator(config) if eval_every and accelerator.is_main_process else None

    saved_steps = {state.step} if resume_target is not None else set()

    def checkpoint() -> Path:
        saved_steps.add(state.step)
        return save_checkpoint(accelerator, run_dir, state.step, dataclasses.asdict(state),
                               _training_tensors(ema, grid_noise, grids, real_samples), config.keep_checkpoints)

    stop = StopRequest()
    progress = Progress(total_steps, accelerator.is_main_process, config.log_every)
    progress.bar.update(state.step)
    try:
        step_start = time.perf_counter()  # a step's time covers drawing its batch and training on it
        while state.step < total_steps:
            for real in batches.epoch(state.epoch, state.batch_in_epoch):
                if state.step >= total_steps:
                    break
                if real_samples is None:
                    real_samples = to_uint8(real[:16, 0]).cpu()  # the main process holds the global batch's head
                noise = step_noise(config.seed, state.step, config.batch_size, config.latent_dim,
                                   accelerator.process_index, accelerator.num_processes).to(device, dtype)
                metrics = train_step(accelerator, gan, real, noise, config.real_label)
                flags = torch.tensor([skipped_steps(gan), float(stop.requested)], device=device, dtype=metrics.dtype)
                # one small all-reduce per step: metrics averaged over processes, and any process's stop request
                values = accelerator.reduce(torch.cat([metrics, flags]), reduction="mean").float().cpu().tolist()
                state.step += 1
                state.batch_in_epoch += 1
                if not all(map(math.isfinite, values[:2])):
                    raise NonFiniteLossError(
                        f"the loss became non-finite at step {state.step} (d_loss {values[0]}, g_loss {values[1]}); "
                        f"no checkpoint was written for it. Lower --lr, or resume from the last checkpoint "
                        f"with --resume latest."
                    )
                if ema is not None:
                    ema.update(generator)
                state.skipped_steps += round(values[4] * accelerator.num_processes)
                images_per_second = config.batch_size / (time.perf_counter() - step_start)
                row = {"step": state.step, "epoch": state.epoch, **dict(zip(METRIC_NAMES, values[:4], strict=True)),
                       "images_per_second": images_per_second,
                       "lr_generator": gan.generator_optimizer.param_groups[0]["lr"],
                       "lr_discriminator": gan.discriminator_optimizer.param_groups[0]["lr"],
                       "skipped_steps": state.skipped_steps}
                if accelerator.scaler is not None:
                    row["loss_scale"] = accelerator.scaler.get_scale()
                state.history.append(row)
                tracker.log(row, step=state.step)
                if accelerator.is_main_process and (state.step % config.sample_every == 0 or state.step == total_steps):
                    grids.append(sample_images(sampler, grid_noise))
                    state.grid_steps.append(state.step)
                    tracker.log_image("samples/fixed_noise", pictures.tile(grids[-1].numpy(), columns=8),
                                      step=state.step, caption=f"step {state.step}")
                if evaluator is not None and (state.step % eval_every == 0 or state.step == total_steps):
                    quality = evaluate_samples(evaluator, sampler, config)
                    row.update(quality)
                    tracker.log(quality, step=state.step)
                    progress.note(f"step {state.step}: FID {quality['eval/fid']:.2f}, coverage "
                                  f"{quality['eval/class_coverage']:.3f}, {quality['eval/seconds']:.1f} s")
                if state.step % config.log_every == 0 or state.step == total_steps or progress.interactive:
                    progress.update(state.step, state.epoch, row, images_per_second)
                if values[5] > 0:  # a process was asked to stop: all checkpoint this same step, then leave
                    path = checkpoint()
                    tracker.log({"preempted_at_step": state.step}, step=state.step)
                    raise PreemptedError(stop.signum or signal.SIGTERM, path)
                if state.step % checkpoint_every == 0 and state.step < total_steps:
                    checkpoint()
                step_start = time.perf_counter()  # grids, evaluations and checkpoints are not training time
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
        progress.close()
        if state.step not in saved_steps:
            checkpoint()
        finish_run(accelerator, config, run_dir, metadata, state, generator, ema, grids, real_samples, tracker)
    except PreemptedError:
        if accelerator.is_main_process:
            progress.close()
        tracker.finish()
        raise
    finally:
        stop.restore()
    return RunResult(run_dir, state)


def finish_run(accelerator: Accelerator, config: TrainConfig, run_dir: Path, metadata: dict, state: TrainerState,
               generator: torch.nn.Module, ema: GeneratorEMA | None, grids: list[torch.Tensor],
               real_samples: torch.Tensor | None, tracker: Tracker) -> None:
    """The final generator, config, pictures and metrics table (main process), logged to the tracker too."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        which = "ema" if ema is not None else "trained"
        weights_metadata = {"run_name": run_dir.name, "step": str(state.step), "weights": which}
        save_generator(ema.model if ema is not None else generator, run_dir / GENERATOR_FILE, weights_metadata)
        if ema is not None:
            save_generator(generator, run_dir / TRAINED_GENERATOR_FILE, {**weights_metadata, "weights": "trained"})
        metadata.update(final_step=state.step, skipped_steps=state.skipped_steps)
        write_json_atomic(run_dir / CONFIG_FILE, metadata)

        final_noise = torch.randn(64, config.latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
        sampler = ema.model if ema is not None else generator
        fresh = sample_images(sampler, final_noise.to(next(sampler.parameters()).device,
                                                      next(sampler.parameters()).dtype))
        if real_samples is not None:
            pictures.save_real_samples(run_dir / pictures.REAL_SAMPLES, real_samples.numpy())
        pictures.save_samples_final(run_dir / pictures.SAMPLES_FINAL, fresh.numpy(), which)
        pictures.save_samples_over_time(run_dir / pictures.SAMPLES_OVER_TIME,
                                        list(zip(state.grid_steps, [g.numpy() for g in grids], strict=True)))
        pictures.save_losses(run_dir / pictures.LOSSES, state.history)
        pictures.write_metrics_csv(run_dir / pictures.METRICS_CSV, state.history)
        for name in (pictures.REAL_SAMPLES, pictures.SAMPLES_OVER_TIME, pictures.SAMPLES_FINAL, pictures.LOSSES):
            if (run_dir / name).exists():
                tracker.log_image(f"pictures/{Path(name).stem}", plt_image(run_dir / name), step=state.step)
        print(f"saved {run_dir / GENERATOR_FILE} ({which} weights) after {state.step} steps"
              + (f" ({state.skipped_steps} fp16 optimizer steps skipped)" if state.skipped_steps else ""), flush=True)
    tracker.finish()


def plt_image(path: Path) -> np.ndarray:
    import matplotlib.image

    return (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8)
