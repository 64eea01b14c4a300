"""The training run, top to bottom: set-up, the loop, the end (:func:`train`), and the few helpers only it uses."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from gan import pictures
from gan.artifacts import (
    CONFIG_FILE,
    GENERATOR_FILE,
    generator_metadata,
    generator_path,
    plain_state_dict,
    save_best_generator,
    save_final_generators,
    versions,
)
from gan.atomic_write import write_json
from gan.checkpointing import (
    ResumePlan,
    TrainerState,
    checkpoint_dirs,
    find_resume,
    is_finished,
    remove_partial_checkpoints,
    restore,
    resume_command,
    resumed_config,
    save_checkpoint,
)
from gan.config import SetupError, TrainConfig
from gan.cpu_kernels import enable_cpu_kernels
from gan.data import (
    CLASS_CHARACTERS,
    CLASS_NAMES,
    DataError,
    KMNISTData,
    ShardedBatches,
    class_exemplars,
    ensure_files,
    first_classes,
    load_kmnist,
    to_uint8,
)
from gan.devices import cpu_description, make_accelerator, resolve_for_device, set_tf32
from gan.ema import GeneratorEMA
from gan.models import Discriminator, Generator
from gan.noise import grid_inputs, step_labels_tensor, step_noise_tensor, wrong_labels_tensor
from gan.paths import output_dir_problem
from gan.preemption import StopRequest
from gan.samplers import generate, generation_labels, torch_sampler
from gan.step import GAN, STEP_METRICS, train_step
from gan.sync_batchnorm import convert_sync_batchnorm
from gan.tracking import Progress, Tracker, new_run_id

REAL_SAMPLES = 16  # real images kept from the first batch for real_samples.png


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; no checkpoint of the broken weights is written."""


class PublishError(RuntimeError):
    """--push-to-hub failed after the run finished; its files are complete in the run folder."""


class PreemptedError(Exception):
    """The run stopped on SIGTERM/SIGINT after writing a checkpoint; ``--resume latest`` continues it."""

    def __init__(self, signum: int, checkpoint: Path):
        run_dir = checkpoint.parent.parent
        super().__init__(f"stopped by signal {signum} after writing {checkpoint}; {resume_command(run_dir)}")
        self.signum, self.checkpoint = signum, checkpoint


def train(config: TrainConfig) -> TrainerState:
    """Train as ``config`` says, into ``<output_dir>/<run_name>/``; return the final counters."""
    # ---- set-up: the settings of this launch, the processes, the run folder, data, networks, reporting
    plan = find_resume(config)
    if plan is not None:
        config = resumed_config(config, plan)
    if config.deterministic:
        use_deterministic_algorithms()
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once and keeps the fastest
    accelerator = make_accelerator(config)
    config = resolve_for_device(config, accelerator)
    set_tf32(config.tf32)
    main_process = accelerator.is_main_process
    run_dir = new_run_dir(config, accelerator, plan)
    device, dtype = accelerator.device, getattr(torch, config.dtype)

    data = first_classes(load_data(config, accelerator), config.num_classes)
    labels = data.labels.to(device) if config.num_classes else None  # a conditional run's real classes
    batches = ShardedBatches(data.images.to(device), config.batch_size, config.seed, accelerator.process_index,
                             accelerator.num_processes, dtype, labels)
    total_steps = min(batches.steps_per_epoch * config.epochs, config.max_steps or math.inf)
    checkpoint_every = config.checkpoint_every or batches.steps_per_epoch  # default: once per epoch
    eval_every = batches.steps_per_epoch if config.eval_every is None else config.eval_every

    gan = build_gan(config, accelerator)
    generator = accelerator.unwrap_model(gan.generator)
    ema = GeneratorEMA(generator, config.ema_decay, device) if config.ema_decay > 0 else None
    sampler = ema.model if ema is not None else generator  # what grids, evaluations and generator.safetensors show
    grid_noise, grid_labels = grid_tensors(config.seed, "grid", config.latent_dim, config.num_classes, device, dtype)
    state, samples, best = TrainerState(), SampleRecord(), BestGenerator()
    if plan is not None:
        state, samples, best = resume_state(accelerator, plan, ema)
    samples.rows = class_rows(data, config.num_classes)
    if config.report_to == "wandb" and state.wandb_run_id is None:
        state.wandb_run_id = new_run_id()  # the main process's is the run's (it writes config.json, checkpoints)

    metadata = run_metadata(config, accelerator, run_dir, ema is not None, plan, state)
    if main_process:
        run_dir.mkdir(exist_ok=True)
        write_json(run_dir / CONFIG_FILE, metadata)
        if plan is not None:
            best.write(run_dir, metadata)  # the best as of the checkpoint: a later one on disk was not kept
    tracker = Tracker(accelerator, config.report_to, run_dir, config.wandb_project, config.wandb_entity,
                      config.wandb_mode, metadata, state.wandb_run_id)
    if main_process:  # the tracker's run lacks the checkpoint's history when offline or new: log it again
        log_history(tracker, state, samples, since=tracker.first_step_missing())
    evaluator = make_evaluator(config, device) if eval_every and main_process else None
    progress = Progress(total_steps, main_process, config.log_every, done=state.step)
    checkpointed_at = state.step if plan is not None and not plan.fork else None

    def checkpoint() -> Path:
        nonlocal checkpointed_at
        checkpointed_at = state.step
        tensors = {"fixed_noise": grid_noise.float(), **(ema.tensors() if ema else {}), **samples.tensors(),
                   **best.tensors()}
        state.best = best.record()
        if grid_labels is not None:
            tensors["fixed_labels"] = grid_labels
        return save_checkpoint(accelerator, run_dir, state, tensors, metadata, config.keep_checkpoints)

    # ---- the loop: one D step and one G step per global batch, then what this step is due for. Between sync
    # points nothing is read back from the device, so the host queues step after step; at a sync point (every
    # --log-every steps, and before an evaluation or a checkpoint) the steps' metrics are read, checked, logged,
    # and a stop request is agreed by all processes.
    stop = StopRequest()
    pending = PendingSteps()
    try:
        while state.step < total_steps:
            for real, real_classes in batches.labelled_epoch(state.epoch, state.batch_in_epoch):
                if state.step >= total_steps:
                    break
                if samples.real is None:
                    samples.real = to_uint8(real[:REAL_SAMPLES, 0])  # the main process holds the batch's head
                noise = step_noise_tensor(config.seed, state.step, config.batch_size, config.latent_dim, device,
                                          dtype, accelerator.process_index, accelerator.num_processes)
                fake_classes = wrong_classes = None
                if config.num_classes:  # the classes the generator is asked for: like the noise, from (seed, step)
                    fake_classes = step_labels_tensor(config.seed, state.step, config.batch_size, config.num_classes,
                                                      device, accelerator.process_index, accelerator.num_processes)
                if config.mismatch_loss_weight:  # a wrong class for each real image, also from (seed, step)
                    wrong_classes = wrong_labels_tensor(config.seed, state.step, real_classes, config.batch_size,
                                                        config.num_classes, device, accelerator.process_index,
                                                        accelerator.num_processes)
                metrics = train_step(accelerator, gan, real, noise, config.real_label, real_classes, fake_classes,
                                     config.class_loss_weight, wrong_classes, config.mismatch_loss_weight)
                state.step += 1
                state.batch_in_epoch += 1
                pending.add(state.step, state.epoch, metrics)
                if ema is not None:
                    ema.update(generator)
                last_step = state.step == total_steps
                if main_process and (state.step % config.sample_every == 0 or last_step):
                    pending.grids.append((state.step, sample_images(sampler, grid_noise, grid_labels)))
                evaluate_now = bool(eval_every) and (state.step % eval_every == 0 or last_step)
                checkpoint_now = state.step % checkpoint_every == 0 and not last_step
                if not (state.step % config.log_every == 0 or last_step or evaluate_now or checkpoint_now):
                    continue

                # a sync point: the one wait for the device since the last
                rows, stop_requested = pending.read(accelerator, stop.requested, config.batch_size)
                record_steps(rows, pending.grids, state, samples, gan, accelerator, tracker, progress)
                pending.grids.clear()
                if evaluator is not None and evaluate_now:
                    quality = evaluate_samples(evaluator, sampler, config)
                    state.history[-1].update(quality)
                    tracker.log(quality, step=state.step)
                    progress.note(f"step {state.step}: FID {quality['eval/fid']:.2f}, coverage "
                                  f"{quality['eval/class_coverage']:.3f}, {quality['eval/seconds']:.1f} s")
                    if best.consider(state.step, quality, sampler):
                        best.write(run_dir, metadata)
                if stop_requested:  # a process was asked to stop: all checkpoint this same step, then leave
                    path = checkpoint()
                    tracker.log({"preempted_at_step": state.step}, step=state.step)
                    raise PreemptedError(stop.signum or signal.SIGTERM, path)
                if checkpoint_now:
                    checkpoint()
                pending.restart_clock()  # evaluations and checkpoints are not training time
            else:
                state.epoch += 1
                state.batch_in_epoch = 0

        # ---- the end: a last checkpoint, the final generator, config and pictures
        progress.close()
        if checkpointed_at != state.step:
            checkpoint()
        accelerator.wait_for_everyone()
        if main_process:
            finish_run(run_dir, metadata, state, generator, ema, samples, best, tracker)
        tracker.finish()
        if main_process and config.push_to_hub:
            publish(run_dir, config)
    except PreemptedError:
        progress.close()
        tracker.finish()
        raise
    finally:
        stop.restore()
    return state


def use_deterministic_algorithms() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def new_run_dir(config: TrainConfig, accelerator: Accelerator, plan: ResumePlan | None) -> Path:
    """The run folder, named the same on every process (the main process picks the timestamp); its place is
    checked here, and the folder made once the data have loaded (a data error leaves no empty run folder).

    A fresh start refuses a folder that holds a run with checkpoints or a finished one (nothing is overwritten)
    and restarts, in place, a run that stopped before its first checkpoint (there is nothing to lose). The main
    process decides and every process follows, so a refusal reaches them all.
    """
    decision: list[Any] = [config.run_name or datetime.now().strftime("%Y%m%d-%H%M%S"), None]
    if accelerator.is_main_process:
        run_dir = Path(config.output_dir) / decision[0]
        decision[1] = output_dir_problem(run_dir.parent, "--output-dir")  # the run's own folder: once data loaded
        if decision[1] is None and run_dir.exists() and not run_dir.is_dir():
            decision[1] = f"--run-name {run_dir.name}: {run_dir} is a file; choose another --run-name"
        if decision[1] is None and plan is None and (run_dir / CONFIG_FILE).exists():
            if checkpoint_dirs(run_dir):
                decision[1] = (f"{run_dir} already holds a run with checkpoints; choose another --run-name, or "
                               f"{resume_command(run_dir)}")
            elif is_finished(run_dir):
                decision[1] = f"{run_dir} already holds a finished run; choose another --run-name"
            else:
                print(f"note: {run_dir} holds a run that stopped before its first checkpoint; starting it afresh",
                      flush=True)
        if decision[1] is None:
            for stale in remove_partial_checkpoints(run_dir):
                print(f"note: removed {stale}, a checkpoint left half-written by an earlier crash", flush=True)
    broadcast_object_list(decision)
    if decision[1] is not None:
        raise SetupError(f"  - {decision[1]}")
    return Path(config.output_dir) / decision[0]


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


def build_gan(config: TrainConfig, accelerator: Accelerator) -> GAN:
    """Both networks and their optimizers, laid out for the device and prepared by accelerate."""
    torch.manual_seed(config.seed)  # same initial weights on every process (DDP also broadcasts them)
    dtype = getattr(torch, config.dtype)
    # initialised in fp32 either way
    generator = Generator(config.latent_dim, config.base_width, config.num_classes, config.class_norm).to(dtype)
    discriminator = Discriminator(config.base_width, config.num_classes, config.class_loss_weight > 0).to(dtype)
    if config.channels_last:  # conv outputs follow the weights' layout; [B, 1, 28, 28] is both
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    if config.cpu_kernels:
        enable_cpu_kernels(generator, discriminator)
    if config.sync_bn:
        generator = convert_sync_batchnorm(generator, accelerator.device)
        discriminator = convert_sync_batchnorm(discriminator, accelerator.device)
    if config.compile:  # in place: the modules keep their class and state-dict keys, so checkpoints do not change
        generator.compile()
        discriminator.compile()
    # One fused kernel per optimizer step. On a GPU under fp16 it also lets GradScaler skip a step on the device
    # itself; with the unfused Adam it reads the overflow flag back to the host every step.
    adam = {"betas": (config.beta1, config.beta2), "fused": accelerator.device.type in ("cpu", "cuda") or None}
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, **adam)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator, **adam)
    return GAN(*accelerator.prepare(generator, discriminator, generator_optimizer, discriminator_optimizer))


def run_metadata(config: TrainConfig, accelerator: Accelerator, run_dir: Path, ema: bool, plan: ResumePlan | None,
                 state: TrainerState) -> dict[str, Any]:
    """What config.json records: every (resolved) setting, the processes and devices of each launch, where a
    fork came from, the library versions."""
    earlier = plan.settings if plan is not None else {}  # the run's record of its earlier launches
    step = state.step
    launch = {"from_step": step, "world_size": accelerator.num_processes, "device": accelerator.device.type,
              "started": datetime.now().isoformat(timespec="seconds")}
    metadata = {
        **config.to_dict(),
        "run_name": run_dir.name,
        "world_size": accelerator.num_processes,
        "device": accelerator.device.type,
        "distributed_type": str(accelerator.distributed_type),
        "cpu": cpu_description(),
        "generator_weights": "ema" if ema else "trained",
        **({"class_names": list(CLASS_CHARACTERS[: config.num_classes])} if config.num_classes else {}),
        "launches": [*earlier.get("launches", []), launch],
        "wandb_run_id": state.wandb_run_id,
        "final_step": None,
        "versions": versions(),
    }
    if plan is not None and plan.fork:
        metadata["forked_from"] = {"run": str(plan.source_run), "step": step}
    elif "forked_from" in earlier:
        metadata["forked_from"] = earlier["forked_from"]
    return metadata


def resume_state(accelerator: Accelerator, plan: ResumePlan, ema: GeneratorEMA | None
                 ) -> tuple[TrainerState, SampleRecord, BestGenerator]:
    """Restore the checkpoint ``plan`` names into the prepared networks, optimizers and EMA."""
    checkpoint_path, state, tensors = restore(accelerator, plan.source)
    if ema is not None:
        ema.load_tensors(tensors)
    if plan.fork:
        state.wandb_run_id = None  # a fork is a new W&B run
    if accelerator.is_main_process:
        if plan.reason:
            print(plan.reason, flush=True)
        into = f" into the new run {plan.run_dir} (a fork)" if plan.fork else ""
        print(f"resumed from {checkpoint_path} at step {state.step}{into}", flush=True)
    return state, SampleRecord.from_tensors(tensors), BestGenerator.from_checkpoint(state.best, tensors)


@dataclass
class PendingSteps:
    """The steps trained since the last sync point: their metrics (and the main process's new sample grids) stay
    on the device until :meth:`read`."""

    steps: list[tuple[int, int]] = field(default_factory=list)  # (step, epoch)
    metrics: list[torch.Tensor] = field(default_factory=list)  # each [len(STEP_METRICS)], on the device
    grids: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, uint8 grid on the device)
    started: float = field(default_factory=time.perf_counter)

    def add(self, step: int, epoch: int, metrics: torch.Tensor) -> None:
        self.steps.append((step, epoch))
        self.metrics.append(metrics)

    def read(self, accelerator: Accelerator, stop_requested: bool, batch_size: int
             ) -> tuple[list[dict[str, float]], bool]:
        """The pending steps' metrics averaged over processes, and whether any process was asked to stop.

        One all-reduce and one copy to the host for the whole window; every process must call it at the same step.
        """
        stacked = torch.stack(self.metrics)  # [steps, metrics]
        flag = torch.tensor([float(stop_requested)], device=stacked.device, dtype=stacked.dtype)
        values = accelerator.reduce(torch.cat([stacked.flatten(), flag]), reduction="mean").float().cpu()
        images_per_second = batch_size * len(self.steps) / (time.perf_counter() - self.started)
        rows = [{"step": step, "epoch": epoch, **dict(zip(STEP_METRICS, row.tolist(), strict=True)),
                 "images_per_second": images_per_second}
                for (step, epoch), row in zip(self.steps, values[:-1].reshape(len(self.steps), -1), strict=True)]
        self.steps, self.metrics = [], []
        return rows, bool(values[-1] > 0)

    def restart_clock(self) -> None:
        self.started = time.perf_counter()


def record_steps(rows: list[dict[str, float]], grids: list[tuple[int, torch.Tensor]], state: TrainerState,
                 samples: SampleRecord, gan: GAN, accelerator: Accelerator, tracker: Tracker,
                 progress: Progress) -> None:
    """Check, count and log the steps read at a sync point, with the sample grids drawn meanwhile, in step order.

    NonFiniteLossError at the first broken step: no checkpoint is ever written after one.
    """
    grid_at = dict(grids)
    if samples.real is not None:
        samples.real = samples.real.cpu()
    extra = {"lr_generator": gan.generator_optimizer.param_groups[0]["lr"],
             "lr_discriminator": gan.discriminator_optimizer.param_groups[0]["lr"]}
    if accelerator.scaler is not None:
        extra["loss_scale"] = accelerator.scaler.get_scale()  # the scale now, at the end of the window
    for row in rows:
        check_finite(row, row["step"])
        state.skipped_steps += round(row.pop("skipped_steps"))  # every process skips the same steps: the mean
        row.update(extra, skipped_steps=state.skipped_steps)
        state.history.append(row)
        grid = None
        if row["step"] in grid_at:
            grid = grid_at[row["step"]].cpu()
            samples.grids.append(grid)
            state.grid_steps.append(row["step"])
        log_step(tracker, row, grid, samples.rows)
        progress.update(row)


def log_step(tracker: Tracker, row: dict[str, float], grid: torch.Tensor | None, rows: pictures.ClassRows | None
             ) -> None:
    """One step's metrics row and, when one was drawn at it, the fixed-noise grid."""
    tracker.log(row, step=row["step"])
    if grid is not None:
        legend = f"; {rows.legend()}" if rows is not None else ""
        tracker.log_image("samples/fixed_noise", pictures.grid_image(grid.numpy(), rows), step=row["step"],
                          caption=f"step {row['step']}{legend}")


def log_history(tracker: Tracker, state: TrainerState, samples: SampleRecord, since: float) -> None:
    """Log the restored history again from step ``since`` on (rows and grids as they were first logged), so that
    the tracker's run holds every step once although the process that first logged them may have lost them."""
    grids = dict(zip(state.grid_steps, samples.grids, strict=True))
    for row in state.history:
        if row["step"] >= since:
            log_step(tracker, row, grids.get(row["step"]), samples.rows)


def check_finite(losses: dict[str, float], step: int) -> None:
    if not (math.isfinite(losses["d_loss"]) and math.isfinite(losses["g_loss"])):
        raise NonFiniteLossError(
            f"the loss became non-finite at step {step} (d_loss {losses['d_loss']}, g_loss {losses['g_loss']}); "
            f"no checkpoint was written for it. Resuming would diverge the same way: start a new run with a lower "
            f"--lr (or --lr-generator / --lr-discriminator)."
        )


@dataclass
class SampleRecord:
    """The images the final pictures are made of, kept in every checkpoint (uint8 [N, 28, 28] on the CPU)."""

    grids: list[torch.Tensor] = field(default_factory=list)  # the fixed-noise grid at each grid step
    real: torch.Tensor | None = None  # the first real images of the first batch
    rows: pictures.ClassRows | None = None  # a conditional run's row labels (from the data: not checkpointed)

    def tensors(self) -> dict[str, torch.Tensor]:
        found = {"grids": torch.stack(self.grids)} if self.grids else {}
        return found | ({"real_samples": self.real} if self.real is not None else {})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SampleRecord:
        return cls(list(tensors["grids"]) if "grids" in tensors else [], tensors.get("real_samples"))


@dataclass
class BestGenerator:
    """The sampled generator at its lowest FID so far (with --eval-every; main process): kept in every checkpoint
    and in RUN_DIR/best/, so a resumed or forked run keeps its best across the interruption."""

    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluation that chose it (no "eval/" prefix)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # plain state dict, CPU

    def consider(self, step: int, quality: dict[str, float], sampler: torch.nn.Module) -> bool:
        """Keep ``sampler`` if its evaluation ``quality`` ('eval/<name>') has the lowest FID yet; True if kept."""
        metrics = evaluation_of(quality)
        if self.weights and not metrics["fid"] < self.metrics["fid"]:
            return False
        self.step, self.metrics, self.weights = step, metrics, plain_state_dict(sampler)
        return True

    def write(self, run_dir: Path, metadata: dict[str, Any]) -> None:
        """RUN_DIR/best/generator.safetensors as this record says; none when there is no best yet."""
        if not self.weights:
            generator_path(run_dir, "best").unlink(missing_ok=True)
            return
        save_best_generator(run_dir, self.weights, generator_metadata(run_dir.name, self.step,
                            metadata["generator_weights"], metadata.get("num_classes", 0)), self.metrics)

    def record(self) -> dict[str, Any] | None:
        return {"step": self.step, "metrics": self.metrics} if self.weights else None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"best.{name}": value for name, value in self.weights.items()}

    @classmethod
    def from_checkpoint(cls, record: dict[str, Any] | None, tensors: dict[str, torch.Tensor]) -> BestGenerator:
        if record is None:
            return cls()
        weights = {name.removeprefix("best."): value for name, value in tensors.items() if name.startswith("best.")}
        return cls(record["step"], record["metrics"], weights)


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode (running BatchNorm statistics, no cross-process work), then back as it was."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def grid_tensors(seed: int, purpose: str, latent_dim: int, num_classes: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`gan.noise.grid_inputs` as tensors on ``device``, made once: the labels too, so that sampling a grid
    copies nothing from the host."""
    noise, labels = grid_inputs(seed, purpose, latent_dim, num_classes)
    return torch.from_numpy(noise).to(device, dtype), None if labels is None else torch.from_numpy(labels).to(device)


def class_rows(data: KMNISTData, num_classes: int) -> pictures.ClassRows | None:
    """How a conditional run's grids are labelled: each class's first image in the split, and its names."""
    if not num_classes:
        return None
    return pictures.ClassRows(class_exemplars(data, num_classes).numpy(), CLASS_NAMES[:num_classes],
                              CLASS_CHARACTERS[:num_classes])


def sample_images(generator: torch.nn.Module, noise: torch.Tensor, labels: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """uint8 [N, 28, 28] from the generator in eval mode, left on the device of its weights (and in their dtype)."""
    with eval_mode(generator):
        return to_uint8(torch_sampler(generator)(noise, labels)[:, 0])


def make_evaluator(config: TrainConfig, device: torch.device):
    from gan.metrics import Evaluator  # torchmetrics/scipy: only when evaluating

    # On the training device: the other processes wait for the main one while it evaluates.
    # 20 KID subsets instead of 100: still unbiased, a little noisier, several times faster.
    return Evaluator(config.data_dir, config.split, device=device, kid_subsets=20, download=False)


def evaluate_samples(evaluator, generator: torch.nn.Module, config: TrainConfig) -> dict[str, float]:
    """Sample-quality metrics of ``generator`` in eval mode, from the run seed's sample noise, as 'eval/<name>'."""
    start = time.perf_counter()
    with eval_mode(generator):
        images = generate(torch_sampler(generator), config.latent_dim, config.eval_samples, seed=config.seed,
                          num_classes=config.num_classes)
    metrics = evaluator.evaluate(images, generation_labels(config.eval_samples, config.num_classes))
    metrics["seconds"] = time.perf_counter() - start
    return {f"eval/{name}": float(value) for name, value in metrics.items()}


def evaluation_of(row: dict[str, float]) -> dict[str, float]:
    """The sample-quality metrics of a logged row ('eval/<name>'), by name, without the time they took."""
    return {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/") and k != "eval/seconds"}


def finish_run(run_dir: Path, metadata: dict[str, Any], state: TrainerState, generator: torch.nn.Module,
               ema: GeneratorEMA | None, samples: SampleRecord, best: BestGenerator, tracker: Tracker) -> None:
    """Main process: the final generator(s), config.json with the final step, the pictures and the model artifact,
    all logged too."""
    which = save_final_generators(run_dir, generator, ema.model if ema is not None else None, state.step)
    metadata.update(final_step=state.step, skipped_steps=state.skipped_steps)
    if best.weights:
        metadata["best"] = {"step": best.step, "fid": best.metrics["fid"]}
    write_json(run_dir / CONFIG_FILE, metadata)
    sampler = ema.model if ema is not None else generator
    noise, labels = grid_tensors(metadata["seed"], "samples", metadata["latent_dim"], metadata["num_classes"])
    fresh = sample_images(sampler, noise, labels).cpu()
    real = samples.real.numpy() if samples.real is not None else None
    grids = list(zip(state.grid_steps, [grid.numpy() for grid in samples.grids], strict=True))
    for path in pictures.save_run_pictures(run_dir, real, fresh.numpy(), which, grids, state.history, samples.rows):
        tracker.log_image(f"pictures/{path.stem}", pictures.read_rgb(path), step=state.step)
    log_model_versions(run_dir, metadata, state, best, tracker)
    print(f"saved {run_dir / GENERATOR_FILE} ({which} weights) after {state.step} steps"
          + (f" ({state.skipped_steps} fp16 optimizer steps skipped)" if state.skipped_steps else "")
          + (f"; the best, FID {best.metrics['fid']:.2f} at step {best.step}, in {generator_path(run_dir, 'best')}"
             if best.weights else ""), flush=True)
    if tracker.sync_command():
        print(f"W&B ran offline: upload this run with `{tracker.sync_command()}`", flush=True)


def publish(run_dir: Path, config: TrainConfig) -> None:
    """--push-to-hub: what ``export.py RUN_DIR --push-to-hub`` does (export, verify, card, W&B artifact, upload)."""
    from gan.artifacts import ArtifactError
    from gan.export import ExportConfig, ExportError, run_export
    from gan.hub import HubError

    try:
        run_export(ExportConfig(run_dir=str(run_dir), push_to_hub=True, hub_model_id=config.hub_model_id,
                                private=config.private))
    except (ArtifactError, ExportError, HubError) as error:
        retry = f"python export.py {run_dir} --push-to-hub" + (f" --hub-model-id {config.hub_model_id}"
                                                               if config.hub_model_id else "")
        raise PublishError(f"{error} (the run finished: its files are in {run_dir}; publish it later with {retry})"
                           ) from None


def log_model_versions(run_dir: Path, metadata: dict[str, Any], state: TrainerState, best: BestGenerator,
                       tracker: Tracker) -> None:
    """The final generator as the W&B model artifact's ``latest`` version, also ``best`` when it is the best one
    evaluated; an earlier best as a version of its own before it. Each version's metadata holds its evaluation."""
    common = {"run_name": run_dir.name, "num_classes": metadata["num_classes"], "latent_dim": metadata["latent_dim"],
              "weights": metadata["generator_weights"]}
    final_is_best = bool(best.weights) and best.step == state.step
    if best.weights and not final_is_best:
        tracker.log_model([generator_path(run_dir, "best")], ["best", f"step-{best.step}"],
                          {**common, "step": best.step, "selected": "best", **best.metrics})
    last = state.history[-1] if state.history and state.history[-1]["step"] == state.step else {}
    final_metrics = evaluation_of(last)
    tracker.log_model([generator_path(run_dir, "final")], ["latest", f"step-{state.step}"] + ["best"] * final_is_best,
                      {**common, "step": state.step, "selected": "final", **final_metrics})
