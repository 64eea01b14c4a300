"""Checkpoints: accelerate's ``save_state`` plus the trainer's own state, written atomically, loaded safely.

A checkpoint is ``<run>/checkpoints/step_<N>/``: accelerate's files (models as safetensors, optimizers, scaler, one
RNG file per process) and the trainer's ``trainer_state.json`` (counters, metric history, W&B run id) and
``trainer_state.safetensors`` (EMA weights, fixed noise, sample grids). It is written under a temporary name and
renamed when complete, so a crash mid-write never leaves a folder that looks complete. Loading never unpickles
arbitrary objects: accelerate loads with ``weights_only=True`` and the trainer's files are JSON and safetensors.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
_NAME = re.compile(r"^step_(\d+)$")


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


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, state: dict[str, Any],
                    tensors: dict[str, torch.Tensor], keep: int) -> Path:
    """Write ``step_<step>`` atomically on all processes together; keep the newest ``keep`` checkpoints."""
    folder = run_dir / CHECKPOINTS
    final = folder / f"step_{step}"
    partial = folder / f".step_{step}.partial"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)  # left by a crash
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its own RNG state; the main one the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial / STATE_TENSORS))
        (partial / STATE_JSON).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore models, optimizers, scaler and RNG from ``path``; return the trainer's state and tensors."""
    try:
        state = json.loads((path / STATE_JSON).read_text())
    except (OSError, ValueError) as error:
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
