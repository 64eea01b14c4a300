"""Checkpoints and resuming: accelerate's ``save_state`` plus the trainer's own state, written atomically, loaded
safely; which checkpoint ``--resume`` means, and which settings a resumed run takes from the run.

A checkpoint is ``<run>/checkpoints/step_<N>/``: accelerate's files (models as safetensors, optimizers, scaler, one
RNG file per process) and the trainer's ``trainer_state.json`` (counters, metric history, W&B run id) and
``trainer_state.safetensors`` (EMA weights, fixed noise, sample grids). It is written under a temporary name and
renamed when complete, so a crash mid-write never leaves a folder that looks complete. Loading never unpickles
arbitrary objects: accelerate loads with ``weights_only=True`` and the trainer's files are JSON and safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gan.artifacts import read_config
from gan.config import SetupError, TrainConfig

CHECKPOINTS = "checkpoints"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
_NAME = re.compile(r"^step_(\d+)$")
# Settings a resumed run takes from its config.json: changing them would not continue the same run.
RESUME_FIXED = ("data_dir", "split", "batch_size", "real_label", "lr", "beta1", "beta2", "latent_dim", "base_width",
                "seed", "dtype", "ema_decay", "sample_every", "mixed_precision", "tf32", "sync_bn", "run_name",
                "output_dir")


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


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainerState, tensors: dict[str, torch.Tensor],
                    keep: int) -> Path:
    """Write ``step_<step>`` atomically on all processes together; keep the newest ``keep`` checkpoints."""
    folder = run_dir / CHECKPOINTS
    final = folder / f"step_{state.step}"
    partial = folder / f".step_{state.step}.partial"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)  # left by a crash
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its own RNG state; the main one the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial / STATE_TENSORS))
        (partial / STATE_JSON).write_text(json.dumps(dataclasses.asdict(state)))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise UnsafeCheckpointError(
                f"{path} holds a pickled object that is not plain tensors or numbers, and loading it could run "
                f"arbitrary code, so it was refused ({str(error).splitlines()[0]}). Only resume from checkpoints "
                f"you made yourself; delete this one or pass another with --resume PATH."
            ) from None
        raise CheckpointError(f"{path} could not be read ({error})") from None
    except Exception as error:  # truncated zip, bad safetensors header, shape mismatch ...
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {error})") from None
    return state, tensors


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    """The run or checkpoint folder ``--resume`` names (None: start fresh); SetupError when there is none."""
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
    if path.is_dir() and (checkpoint_dirs(path) or (path.parent.name == CHECKPOINTS)):
        return path
    raise SetupError(f"  - --resume {config.resume}: not a run folder with checkpoints nor a checkpoint folder")


def resumed_config(config: TrainConfig, target: Path) -> TrainConfig:
    """The run's saved settings for everything that defines it; this launch's for the rest (epochs, ...)."""
    run_dir = target.parent.parent if target.parent.name == CHECKPOINTS else target
    saved = read_config(run_dir)
    values = {name: saved[name] for name in RESUME_FIXED if name in saved}
    values.update(run_name=run_dir.name, output_dir=str(run_dir.parent))
    return dataclasses.replace(config, **values)


def restore(accelerator: Accelerator, target: Path) -> tuple[Path, TrainerState, dict[str, torch.Tensor]]:
    """Load the checkpoint ``target`` names (a checkpoint, or a run's newest good one, falling back past damage)."""
    candidates = [target] if target.parent.name == CHECKPOINTS else list(reversed(checkpoint_dirs(target)))
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
