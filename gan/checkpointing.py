"""Checkpoints and resuming: accelerate's ``save_state`` plus the trainer's own state, written atomically, loaded
safely; which checkpoint ``--resume`` means, and which settings a resumed run takes from the run.

A checkpoint is ``<run>/checkpoints/step_<N>/``: accelerate's files (models as safetensors, optimizers, scaler, one
RNG file per process) and the trainer's ``trainer_state.json`` (counters, metric history, W&B run id) and
``trainer_state.safetensors`` (EMA weights, fixed noise, sample grids) and ``config.json`` (the run's settings at
that step). It is written under a temporary name and renamed when complete, so a crash mid-write never leaves a
folder that looks complete. Loading never unpickles arbitrary objects: every pickle file of a checkpoint is
checked with ``weights_only=True`` before accelerate loads it, and the trainer's files are JSON and safetensors.

Resume rules (README, "Checkpoints and resume"): a resumed run takes every setting from the run except
:data:`RESUME_CHANGEABLE`, which it takes from the command line when given there; a defining flag that differs
is refused. ``--resume PATH`` with another ``--run-name``/``--output-dir`` forks the run into a new folder.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from accelerate.utils import load as weights_only_load
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gan.artifacts import CONFIG_FILE, ArtifactError, read_config
from gan.cli import flag_name
from gan.config import SetupError, TrainConfig

CHECKPOINTS = "checkpoints"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
_NAME = re.compile(r"^step_(\d+)$")
LOW_DISK_SPACE = 16 * 2**20  # a write that fails with less free than this failed for want of space
_PARTIAL = re.compile(r"^\.step_\d+\.partial$")
# The only settings a resume may change (the command line's value when given there, else the run's): how long to
# train, how to checkpoint, log, evaluate, track and publish, where the data are, and how this launch lays out its
# devices. Every other setting defines the run and comes from it.
RESUME_CHANGEABLE = ("epochs", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
                     "eval_samples", "report_to", "wandb_project", "wandb_entity", "wandb_mode", "dist_timeout",
                     "data_dir", "no_download", "cpu", "channels_last", "cpu_kernels", "sync_bn", "deterministic",
                     "compile", "dist_backend", "push_to_hub", "hub_model_id", "private")
# Chosen for this launch's devices and processes (gan.devices.resolve_for_device) unless this launch sets them:
# a 1-process run resumed on 2 processes synchronizes its BatchNorm.
RESOLVED_PER_LAUNCH = ("channels_last", "cpu_kernels", "sync_bn")
_NOT_SETTINGS = ("resume", "run_name", "output_dir", "given", "lr")  # lr: compared through the per-network rates
# Defining settings that runs from before their flag did not record, with the value those runs trained with (today's
# default may differ): a resumed older run keeps its model.
UNRECORDED_BEFORE = {"class_loss_weight": 0.0, "class_norm": False, "mismatch_loss_weight": 0.0}


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
    best: dict[str, Any] | None = None  # {"step", "metrics"} of the lowest-FID generator so far (weights: tensors)
    saved_at: float = 0.0  # when the checkpoint holding this state was written (seconds since the epoch)


class CheckpointError(RuntimeError):
    """A checkpoint is damaged or incomplete (the previous one may still be good)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds a pickled object that is not plain tensors/numbers: refused, never unpickled."""


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Completed checkpoints of a run, oldest first (temporary, half-written folders are not listed)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete the half-written checkpoint folders a crash left in ``run_dir``; return what was removed."""
    folder = run_dir / CHECKPOINTS
    stale = [p for p in folder.iterdir() if _PARTIAL.match(p.name)] if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainerState, tensors: dict[str, torch.Tensor],
                    settings: dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>`` atomically on all processes together; keep the newest ``keep`` checkpoints.

    A write error on any process (a full disk, a quota) removes the half-written folder and raises
    :class:`CheckpointError` on every process; the earlier checkpoints are untouched.
    """
    folder = run_dir / CHECKPOINTS
    final = folder / f"step_{state.step}"
    partial = folder / f".step_{state.step}.partial"
    state.saved_at = time.time()

    def main_writes_trainer_files() -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial / STATE_TENSORS))
        (partial / STATE_JSON).write_text(json.dumps(dataclasses.asdict(state)))
        (partial / CONFIG_FILE).write_text(json.dumps(settings, indent=2))

    error = _agreed_error(accelerator, lambda: _start_partial(partial) if accelerator.is_main_process else None,
                          folder)
    if error is None:  # each process writes its own RNG file, the main one the rest
        error = _agreed_error(accelerator, lambda: accelerator.save_state(str(partial)), folder)
    if error is None:
        error = _agreed_error(accelerator, main_writes_trainer_files if accelerator.is_main_process else lambda: None,
                              folder)
    if error is not None:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        previous = checkpoint_dirs(run_dir)
        kept = f"the newest complete checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint"
        raise CheckpointError(f"could not write checkpoint {final} ({error}); {kept}. "
                              f"Free some space (or fix the folder), then {resume_command(run_dir)}")
    if accelerator.is_main_process:
        later = [p for p in checkpoint_dirs(run_dir) if _step_of(p) > state.step]
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if keep > 0:  # the newest `keep` up to this step; later ones are a fork's source, never deleted here
            for old in [p for p in checkpoint_dirs(run_dir) if p not in later][:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _start_partial(partial: Path) -> None:
    if partial.exists():
        shutil.rmtree(partial)  # left by a crash
    partial.mkdir(parents=True)


def _agreed_error(accelerator: Accelerator, work, folder: Path) -> str | None:
    """Run ``work`` on every process; the first process's write error (as text) is returned on all, else None."""
    try:
        work()
        mine = None
    except Exception as error:  # torch.save reports a full disk as a RuntimeError, safetensors as its own error
        mine = _describe_write_error(error, folder)
    if accelerator.num_processes == 1:
        return mine
    return next((message for message in gather_object([mine]) if message is not None), None)


def _describe_write_error(error: Exception, folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or \
            (free is not None and free < LOW_DISK_SPACE):
        return f"no space left on the device: {free / 2**20:.1f} MiB free in {folder}"
    if isinstance(error, OSError):
        return f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def load_checkpoint(accelerator: Accelerator, path: Path) -> tuple[TrainerState, dict[str, torch.Tensor]]:
    """Restore models, optimizers, scaler and RNG from ``path``; return the trainer's state and tensors."""
    try:
        state = TrainerState(**json.loads((path / STATE_JSON).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path / STATE_JSON} is missing or not valid JSON ({error})") from None
    try:
        tensors = load_file(str(path / STATE_TENSORS))
    except (OSError, SafetensorError, ValueError) as error:
        raise CheckpointError(f"{path / STATE_TENSORS} is missing or damaged ({error})") from None
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as error:
        if _refused_pickle(error):
            raise _unsafe(path, error) from None
        raise CheckpointError(f"{path} could not be read ({error})") from None
    except Exception as error:  # truncated zip, bad safetensors header, shape mismatch ...
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {error})") from None
    return state, tensors


def check_pickles(path: Path) -> None:
    """Refuse a checkpoint with any pickle file that holds more than tensors and numbers.

    accelerate itself loads with ``weights_only=True`` but ignores a random-state file it cannot load, so a
    foreign object there would pass silently; every pickle file is checked here first.
    """
    for file in sorted(path.glob("*.pkl")) + sorted(path.glob("*.bin")):
        try:
            weights_only_load(file, map_location="cpu")
        except pickle.UnpicklingError as error:
            if _refused_pickle(error):
                raise _unsafe(file, error) from None
            raise CheckpointError(f"{file} could not be read ({error})") from None
        except Exception as error:
            raise CheckpointError(f"{file} could not be read ({type(error).__name__}: {error})") from None


def _refused_pickle(error: Exception) -> bool:
    return "weights only" in str(error).lower() or "weights_only" in str(error).lower()


def _unsafe(path: Path, error: Exception) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} holds a pickled object that is not plain tensors or numbers, and loading it could run "
        f"arbitrary code, so it was refused ({str(error).splitlines()[0]}). Only resume from checkpoints "
        f"you made yourself; delete this one or pass another with --resume PATH."
    )


# ---------------------------------------------------------------- which run and checkpoint --resume means


@dataclass
class ResumePlan:
    """What ``--resume`` resolved to: the folder to load (a run or one checkpoint) and the run this launch writes."""

    source: Path  # a run folder (its newest readable checkpoint) or one checkpoint folder
    run_dir: Path  # the run folder this launch trains into: the source's run, or a new one (a fork)
    reason: str = ""  # why this run, when --resume latest chose among several
    settings: dict[str, Any] = field(default_factory=dict)  # the resumed run's config.json, as its checkpoint has it

    @property
    def source_run(self) -> Path:
        return run_of(self.source)

    @property
    def fork(self) -> bool:
        return self.run_dir.resolve() != self.source_run.resolve()


def run_of(path: Path) -> Path:
    """The run folder of a run or checkpoint folder."""
    return path.parent.parent if path.parent.name == CHECKPOINTS else path


def resume_command(run_dir: Path, launcher: str = "accelerate launch train_ddp.py") -> str:
    """The complete command that continues the run in ``run_dir`` (with this launch's accelerate options)."""
    return (f"continue it with: {launcher} --output-dir {shlex.quote(str(run_dir.parent))} "
            f"--run-name {shlex.quote(run_dir.name)} --resume latest")


def start_command(run_dir: Path, launcher: str = "accelerate launch train_ddp.py") -> str:
    return (f"{launcher} --output-dir {shlex.quote(str(run_dir.parent))} --run-name {shlex.quote(run_dir.name)} "
            f"(and the run's other flags)")


def is_finished(run_dir: Path) -> bool:
    """Did the run's last launch reach its end (``final_step`` recorded)? A preempted or killed one did not."""
    try:
        return read_config(run_dir).get("final_step") is not None
    except ArtifactError:
        return False


def checkpoint_time(checkpoint: Path) -> float:
    """When ``checkpoint`` was written, as it records it (a checkpoint that does not: its state file's time)."""
    try:
        recorded = json.loads((checkpoint / STATE_JSON).read_text()).get("saved_at")
        return float(recorded) if recorded else (checkpoint / STATE_JSON).stat().st_mtime
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def find_resume(config: TrainConfig) -> ResumePlan | None:
    """The checkpoint ``--resume`` names and the run it continues (None: start fresh); SetupError if unusable."""
    if config.resume is None:
        return None
    plan = _latest(config) if config.resume in ("latest", "auto") else _from_path(config, Path(config.resume))
    return None if plan is None else dataclasses.replace(plan, settings=_saved_settings(plan))


def _latest(config: TrainConfig) -> ResumePlan | None:
    output = Path(config.output_dir)
    if config.run_name:
        run = output / config.run_name
        if checkpoint_dirs(run):
            return ResumePlan(run, run)
        if config.resume == "auto":
            return None
        if is_finished(run):
            raise SetupError(f"  - --resume latest: {run} is a finished run whose checkpoints are gone, so there is "
                             f"nothing to resume; train a new run under another --run-name")
        if (run / CONFIG_FILE).exists():
            raise SetupError(f"  - --resume latest: {run} stopped before its first checkpoint, so there is nothing to "
                             f"resume; start it afresh with: {start_command(run)}")
        raise SetupError(f"  - --resume latest: there is no run {run}; start it with: {start_command(run)}")
    runs = sorted(p for p in output.iterdir() if p.is_dir() and checkpoint_dirs(p)) if output.is_dir() else []
    if not runs:
        if config.resume == "auto":
            return None
        raise SetupError(f"  - --resume latest: no run under {output} has a checkpoint; start a new run without "
                         f"--resume (or name the run with --run-name and --output-dir)")
    unfinished = [run for run in runs if not is_finished(run)]
    choice = unfinished or runs
    if len(choice) == 1:
        newest = checkpoint_dirs(choice[0])[-1]
        why = "the only interrupted run" if unfinished else "the only run"
        return ResumePlan(choice[0], choice[0], f"--resume latest chose {choice[0]} ({why} under {output}, "
                                                f"newest checkpoint {newest.name})")
    listing = "\n".join(f"      {run.name}: newest checkpoint {checkpoint_dirs(run)[-1].name}, written "
                        f"{datetime.fromtimestamp(checkpoint_time(checkpoint_dirs(run)[-1])):%Y-%m-%d %H:%M:%S}"
                        for run in sorted(choice, key=lambda r: checkpoint_time(checkpoint_dirs(r)[-1])))
    kind = "interrupted runs" if unfinished else "runs, all finished,"
    raise SetupError(f"  - --resume latest: {len(choice)} {kind} under {output} could be meant; name one with "
                     f"--run-name NAME (oldest first):\n{listing}")


def _from_path(config: TrainConfig, path: Path) -> ResumePlan:
    is_checkpoint = path.parent.name == CHECKPOINTS and path.is_dir() and _NAME.match(path.name)
    if not (is_checkpoint or (path.is_dir() and checkpoint_dirs(path))):
        raise SetupError(f"  - --resume {config.resume}: not a run folder with checkpoints nor a checkpoint folder "
                         f"(runs/<run> or runs/<run>/{CHECKPOINTS}/step_<N>)")
    source_run = run_of(path)
    output = Path(config.output_dir) if "output_dir" in config.given else source_run.parent
    name = config.run_name if "run_name" in config.given and config.run_name else source_run.name
    plan = ResumePlan(path, output / name)
    if plan.fork:
        if (plan.run_dir / CONFIG_FILE).exists():
            raise SetupError(f"  - --resume {config.resume} --run-name {name}: {plan.run_dir} already holds a run; "
                             f"fork into a new --run-name, or {resume_command(plan.run_dir)}")
        return plan
    newest = checkpoint_dirs(source_run)[-1]
    if is_checkpoint and _step_of(path) < _step_of(newest):
        raise SetupError(
            f"  - --resume {config.resume}: {newest.name} is newer, and continuing {path.name} in {source_run} would "
            f"overwrite it; fork from {path.name} into a new run with --run-name NEW (the run stays as it is), or "
            f"continue from the newest with --resume latest --run-name {source_run.name}")
    return plan


def resumed_config(config: TrainConfig, plan: ResumePlan) -> TrainConfig:
    """The run's settings, with this launch's values for the :data:`RESUME_CHANGEABLE` ones it sets.

    SetupError (exit 2) when this launch sets a defining flag to another value than the run's.
    """
    saved = {**UNRECORDED_BEFORE, **plan.settings}
    given = set(config.given)
    if "lr" in given:  # --lr sets both rates unless a per-network flag overrides it
        given |= {"lr_generator", "lr_discriminator"}
    values, problems = {}, []
    for spec in dataclasses.fields(TrainConfig):
        name = spec.name
        if (name in _NOT_SETTINGS and name != "lr") or name not in saved:
            continue
        if name in RESUME_CHANGEABLE:
            if name not in given:
                values[name] = None if name in RESOLVED_PER_LAUNCH else saved[name]
            continue
        if name in given and name != "lr" and getattr(config, name) != saved[name]:
            problems.append(f"  - {flag_name(name)} {getattr(config, name)}: the run {plan.source_run} was trained "
                            f"with {flag_name(name)} {saved[name]}, and a resumed run keeps it; drop the flag (or "
                            f"start a new run to train with another value)")
        values[name] = saved[name]
    if problems:
        raise SetupError("\n".join(problems))
    values.update(run_name=plan.run_dir.name, output_dir=str(plan.run_dir.parent))
    return dataclasses.replace(config, **values)


def _saved_settings(plan: ResumePlan) -> dict[str, Any]:
    """The settings of the checkpoint being resumed (older checkpoints: the run's config.json)."""
    if plan.source.parent.name == CHECKPOINTS and (plan.source / CONFIG_FILE).is_file():
        candidates = [plan.source / CONFIG_FILE]
    else:
        candidates = [c / CONFIG_FILE for c in reversed(checkpoint_dirs(plan.source))]
    for path in [*candidates, plan.source_run / CONFIG_FILE]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    raise SetupError(f"  - --resume: neither {plan.source_run / CONFIG_FILE} nor its checkpoints hold readable "
                     f"settings; the run folder is damaged")


def restore(accelerator: Accelerator, target: Path) -> tuple[Path, TrainerState, dict[str, torch.Tensor]]:
    """Load the checkpoint ``target`` names (a checkpoint, or a run's newest good one, falling back past damage).

    The main process checks each candidate's pickle files first and every process follows its verdict, so a
    refused or damaged checkpoint is refused or skipped by all processes alike.
    """
    candidates = [target] if target.parent.name == CHECKPOINTS else list(reversed(checkpoint_dirs(target)))
    for index, candidate in enumerate(candidates):
        verdict: list[Any] = [None]
        if accelerator.is_main_process:
            try:
                check_pickles(candidate)
            except UnsafeCheckpointError as error:
                verdict = [("unsafe", str(error))]
            except CheckpointError as error:
                verdict = [("damaged", str(error))]
        broadcast_object_list(verdict)
        try:
            if verdict[0] is not None:
                kind, message = verdict[0]
                raise (UnsafeCheckpointError if kind == "unsafe" else CheckpointError)(message)
            state, tensors = load_checkpoint(accelerator, candidate)
            return candidate, state, tensors
        except UnsafeCheckpointError:
            raise
        except CheckpointError as error:
            if accelerator.is_main_process:
                later = " ; trying the previous one" if index + 1 < len(candidates) else ""
                print(f"warning: checkpoint {candidate} is damaged: {error}{later}", file=sys.stderr, flush=True)
    raise CheckpointError(f"no readable checkpoint in {target}")
