"""What a run reports while it trains: experiment tracking through accelerate's trackers (W&B by default, with
offline W&B as the automatic fallback) and the console progress of the main process."""

from __future__ import annotations

import json
import netrc
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from tqdm.auto import tqdm

WANDB_HOST = "https://api.wandb.ai"


def wandb_logged_in(environ: dict[str, str] | None = None) -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY"):
        return True
    host = environ.get("WANDB_BASE_URL", WANDB_HOST).split("://")[-1].rstrip("/")
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server_answers(timeout: float = 3.0, environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    url = environ.get("WANDB_BASE_URL", WANDB_HOST)
    try:
        urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (a fixed https URL or the user's own)
        return True
    except urllib.error.HTTPError:
        return True  # the server answered, if only with an error status
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_wandb_mode(requested: str | None) -> tuple[str, str | None]:
    """The W&B mode to use and, when it fell back to offline, the line that says why and how to sync.

    An explicit ``--wandb-mode`` wins, then W&B's own WANDB_MODE variable, then the automatic choice.
    """
    requested = requested or os.environ.get("WANDB_MODE") or None
    if requested:
        return requested, None
    if not wandb_logged_in():
        return "offline", "W&B: not logged in (no WANDB_API_KEY, no `wandb login`), logging offline"
    if not wandb_server_answers():
        return "offline", "W&B: the server does not answer, logging offline"
    return "online", None


class Tracker:
    """Scalars and images to the chosen tracker, from the main process only (accelerate's trackers)."""

    def __init__(self, accelerator: Accelerator, report_to: str, run_dir: Path, project: str, entity: str | None,
                 wandb_mode: str | None, config: dict[str, Any], run_id: str | None = None):
        self.accelerator = accelerator
        self.report_to = report_to
        self.run_id = run_id
        if report_to == "none":
            return
        from accelerate.utils import LoggerType

        if report_to == "tensorboard":
            from accelerate.utils import is_tensorboard_available

            if not is_tensorboard_available():
                raise RuntimeError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")
        # The run folder is known only after the accelerator exists (its name is agreed across processes).
        accelerator.log_with = [LoggerType(report_to)]
        accelerator.project_configuration.set_directories(str(run_dir))
        init_kwargs: dict[str, Any] = {}
        if report_to == "wandb":
            mode, why = resolve_wandb_mode(wandb_mode)
            if accelerator.is_main_process:
                self.run_id = run_id or secrets.token_hex(4)  # kept in checkpoints: a resumed run logs to the same
            init_kwargs["wandb"] = {"dir": str(run_dir), "mode": mode, "entity": entity, "name": run_dir.name,
                                    "id": self.run_id, "resume": "allow",
                                    "settings": {"silent": True, "console": "off"}}
            if why and accelerator.is_main_process:
                where = run_dir / "wandb"
                print(f"{why}; files in {where}; upload later with `wandb sync {where}/offline-run-*`", flush=True)
        accelerator.init_trackers(project, config=_loggable(config), init_kwargs=init_kwargs)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.report_to != "none":
            self.accelerator.log(values, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        """``image``: uint8 [H, W] or [H, W, 3]."""
        if self.report_to == "none" or not self.accelerator.is_main_process:
            return
        tracker = self.accelerator.get_tracker(self.report_to, unwrap=True)
        if self.report_to == "wandb":
            import wandb

            tracker.log({name: wandb.Image(image, caption=caption)}, step=step)
        else:  # tensorboard SummaryWriter
            tracker.add_image(name, image, global_step=step, dataformats="HW" if image.ndim == 2 else "HWC")

    def finish(self) -> None:
        """Close the trackers and the process group (accelerate does both; also without a tracker)."""
        self.accelerator.end_training()


def _loggable(config: dict[str, Any]) -> dict[str, Any]:
    """Scalars only, what every tracker's config accepts: nested dicts flattened ('versions/torch'), lists (the
    launches, a conditional run's class names) as JSON text with the characters themselves, None as 'none'."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_loggable({f"{key}/{k}": v for k, v in value.items()}))
        elif isinstance(value, (list, tuple)):
            flat[key] = json.dumps(value, ensure_ascii=False)
        else:
            flat[key] = "none" if value is None else value
    return flat


class Progress:
    """A progress bar on a terminal, plain log lines every ``log_every`` steps elsewhere; main process only."""

    def __init__(self, total: int, enabled: bool, log_every: int, done: int = 0):
        self.interactive = enabled and sys.stdout.isatty()
        self.enabled = enabled
        self.log_every = log_every
        self.total = total
        self.bar = tqdm(total=total, initial=done, disable=not self.interactive, dynamic_ncols=True, unit="step")

    def update(self, row: dict[str, float]) -> None:
        """Show a step's metrics row (``step``, ``epoch``, losses, D outputs, ``images_per_second``)."""
        step = row["step"]
        if self.interactive:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(epoch=row["epoch"], d_loss=f"{row['d_loss']:.3f}", g_loss=f"{row['g_loss']:.3f}",
                                 img_s=f"{row['images_per_second']:.0f}", refresh=False)
        elif self.enabled and (step % self.log_every == 0 or step == self.total):
            print(f"step {step}/{self.total} epoch {row['epoch']} d_loss {row['d_loss']:.4f} "
                  f"g_loss {row['g_loss']:.4f} D(x) {row['d_real']:.3f} D(G(z)) {row['d_fake']:.3f} "
                  f"{row['images_per_second']:.0f} img/s", flush=True)

    def note(self, message: str) -> None:
        if self.interactive:
            self.bar.write(message)
        elif self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        self.bar.close()
