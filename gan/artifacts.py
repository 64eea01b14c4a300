"""The files a run leaves behind: ``config.json`` and ``generator.safetensors``, and loading them back."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gan.atomic_write import atomic_path
from gan.data import CLASS_CHARACTERS
from gan.models import LABEL_DIM, Generator

CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.safetensors"
TRAINED_GENERATOR_FILE = "generator_trained.safetensors"  # the raw trained weights, when the EMA ones are the main
EVALUATION_FILE = "evaluation.json"  # what `python -m gan.evaluate RUN_DIR` writes
BEST_DIR = "best"  # RUN_DIR/best/generator.safetensors: the generator with the lowest FID so far (--eval-every)
WEIGHTS = ("final", "best")  # which of a run's generators to load, export or publish


class ArtifactError(RuntimeError):
    """A run folder or one of its files is missing or unreadable; the message says which and what to do."""


def versions() -> dict[str, str]:
    import accelerate
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "accelerate": accelerate.__version__,
        "cuda": str(torch.version.cuda),
    }


def has_class_norm(state: dict[str, torch.Tensor]) -> bool:
    """Whether a generator's weights include conditional BatchNorm's class scales and shifts."""
    return any(name.startswith("class_norm.") for name in state)


def plain_state_dict(generator: nn.Module) -> dict[str, torch.Tensor]:
    """The generator's weights as a plain :class:`Generator` holds them (BatchNorm2d keys, fp32, CPU, contiguous).

    Loading into a fresh ``Generator`` first proves that the keys are the plain model's, whatever synchronized
    BatchNorm or wrapper the training used.
    """
    state = {k: v.detach().float().cpu() for k, v in generator.state_dict().items()}
    num_classes = state["label_embedding.weight"].shape[0] if "label_embedding.weight" in state else 0
    latent_dim = state["main.0.weight"].shape[0] - (LABEL_DIM if num_classes else 0)
    base_width = state["main.0.weight"].shape[1] // 4
    plain = Generator(latent_dim, base_width, num_classes, class_norm=has_class_norm(state))
    plain.load_state_dict(state)
    return {k: v.contiguous() for k, v in plain.state_dict().items()}


def save_generator(generator: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(plain_state_dict(generator), str(tmp), metadata=metadata)


def generator_metadata(run_name: str, step: int, weights: str, num_classes: int) -> dict[str, str]:
    """A generator file's safetensors metadata: its run, step and weights ("ema" or "trained") and, when
    conditional, what its labels mean."""
    metadata = {"run_name": run_name, "step": str(step), "weights": weights}
    if num_classes:
        metadata.update(num_classes=str(num_classes),
                        class_names=json.dumps(CLASS_CHARACTERS[:num_classes], ensure_ascii=False))
    return metadata


def save_final_generators(run_dir: Path, trained: nn.Module, ema: nn.Module | None, step: int) -> str:
    """``generator.safetensors`` (the EMA weights when there are some, else the trained ones) and, with EMA,
    ``generator_trained.safetensors``; returns which weights the main file holds ("ema" or "trained")."""
    which = "ema" if ema is not None else "trained"
    metadata = generator_metadata(run_dir.name, step, which, getattr(trained, "num_classes", 0))
    save_generator(ema if ema is not None else trained, run_dir / GENERATOR_FILE, metadata)
    if ema is not None:
        save_generator(trained, run_dir / TRAINED_GENERATOR_FILE, {**metadata, "weights": "trained"})
    return which


def save_best_generator(run_dir: Path, state: dict[str, torch.Tensor], metadata: dict[str, str],
                        metrics: dict[str, float]) -> Path:
    """``RUN_DIR/best/generator.safetensors`` (atomically): ``state`` (a plain state dict), with ``metadata`` (see
    :func:`generator_metadata`) and the evaluation that made it the best ("metrics", JSON) in the file itself."""
    path = run_dir / BEST_DIR / GENERATOR_FILE
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={**metadata, "selected_by": "fid", "metrics": json.dumps(metrics)})
    return path


def generator_path(run_dir: str | os.PathLike, weights: str = "final") -> Path:
    """The file of a run's ``weights``: "final" (``generator.safetensors``) or "best" (``best/``)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return Path(run_dir) / (GENERATOR_FILE if weights == "final" else f"{BEST_DIR}/{GENERATOR_FILE}")


def read_generator_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A generator file's metadata, "step" as an int and "metrics" decoded (when present); {} for no metadata."""
    with safe_open(str(path), "pt") as f:
        metadata: dict[str, Any] = dict(f.metadata() or {})
    if "step" in metadata:
        metadata["step"] = int(metadata["step"])
    if "metrics" in metadata:
        metadata["metrics"] = json.loads(metadata["metrics"])
    return metadata


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: {run_dir} is not a finished training run (no {CONFIG_FILE}).")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); the run folder is damaged.") from None


def load_generator(run_dir: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "final"
                   ) -> tuple[Generator, dict[str, Any]]:
    """A run's generator (eval mode, plain BatchNorm) and its config.json contents: the final one, or with
    ``weights="best"`` the one with the lowest FID during training (``best/``)."""
    config = read_config(run_dir)
    path = generator_path(run_dir, weights)
    if not path.is_file():
        why = ("the run was not trained with --eval-every, or stopped before its first evaluation"
               if weights == "best" else f"the run in {run_dir} did not finish writing its generator")
        raise ArtifactError(f"{path} does not exist: {why}.")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({error}); it is corrupt or truncated. Re-run training or "
            f"restore the file."
        ) from None
    generator = Generator(config["latent_dim"], config["base_width"], config.get("num_classes", 0),
                          class_norm=has_class_norm(state)).to(device)
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        raise ArtifactError(f"{path} does not hold the generator that {CONFIG_FILE} describes: {error}") from None
    return generator.eval(), config
