"""What a run reports while it trains: experiment tracking through accelerate's trackers (W&B by default, with
offline W&B as the automatic fallback), the generator as a W&B model artifact, and the console progress of the
main process.

One W&B run per training run, however often it is resumed: the run id is kept in every checkpoint. Offline W&B
cannot resume a run (each launch writes its own ``offline-run-*`` folder, and ``wandb sync`` of a second folder with
the same id replaces the first one's history), and a killed process may leave nothing of its history on disk. So a
resumed launch logs the checkpoint's whole history again before it trains (every step up to the checkpoint, with its
sample grids), and moves the folders of earlier launches of this run to ``wandb/superseded/``: the newest folder
alone holds steps 1..N, each once, and is the one to sync. Online, W&B resumes the run itself; only the steps the
server lacks are logged again (the server keeps those it has, so none is doubled).
"""

from __future__ import annotations

import json
import math
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
SUPERSEDED = "superseded"  # RUN_DIR/wandb/superseded/: earlier launches' offline folders (the newest has their steps)


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
            if run_id is None:
                raise ValueError("a W&B run needs its id (new_run_id(), kept in the run's checkpoints)")
            init_kwargs["wandb"] = {"dir": str(run_dir), "mode": mode, "entity": entity, "name": run_dir.name,
                                    "id": self.run_id, "resume": "allow",
                                    "settings": {"silent": True, "console": "off"}}
        accelerator.init_trackers(project, config=_loggable(config), init_kwargs=init_kwargs)
        if report_to == "wandb" and accelerator.is_main_process:
            self.wandb_run = accelerator.get_tracker("wandb", unwrap=True)
            if mode == "offline":
                self.offline_dir = Path(self.wandb_run.dir).parent  # RUN_DIR/wandb/offline-run-<time>-<id>
                if why:
                    print(f"{why}; upload it later with `{self.sync_command()}`", flush=True)
                for earlier in supersede_offline_runs(run_dir / "wandb", self.run_id, self.offline_dir):
                    print(f"note: {earlier} is superseded by {self.offline_dir.name}, which logs the checkpoint's "
                          f"history again; moved to {earlier.parent / SUPERSEDED}", flush=True)

    wandb_run: Any = None  # the W&B run object (main process, --report-to wandb)
    offline_dir: Path | None = None  # this launch's offline W&B folder: the one to sync

    def first_step_missing(self) -> float:
        """The first step the tracker's run does not hold yet: 0 for a new or offline run (it holds nothing), the
        server's next step for a resumed online W&B run. A resumed launch logs its history from there."""
        if self.wandb_run is None:  # no tracker, or TensorBoard (a resumed run's new event file adds to the old)
            return math.inf
        return int(self.wandb_run.starting_step) if self.wandb_run.resumed else 0

    def sync_command(self) -> str | None:
        """The exact command that uploads this offline run (None online)."""
        return f"wandb sync {self.offline_dir}" if self.offline_dir is not None else None

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

    def log_model(self, files: list[Path], aliases: list[str], metadata: dict[str, Any]) -> None:
        """``files`` as a new version of this run's W&B model artifact (main process, W&B only)."""
        if self.wandb_run is not None:
            log_model_artifact(self.wandb_run, self.run_id, files, aliases, metadata)

    def finish(self) -> None:
        """Close the trackers and the process group (accelerate does both; also without a tracker)."""
        self.accelerator.end_training()


def new_run_id() -> str:
    """A new W&B run id; kept in the run's checkpoints and config.json, so every launch logs to the same run."""
    return secrets.token_hex(4)


def supersede_offline_runs(wandb_dir: Path, run_id: str, current: Path) -> list[Path]:
    """Move the offline folders of earlier launches of W&B run ``run_id`` to ``wandb_dir/superseded/``."""
    earlier = [path for path in sorted(wandb_dir.glob(f"offline-run-*-{run_id}")) if path != current]
    if earlier:
        (wandb_dir / SUPERSEDED).mkdir(exist_ok=True)
    for path in earlier:
        os.replace(path, wandb_dir / SUPERSEDED / path.name)
    return earlier


def model_artifact_name(run_id: str) -> str:
    """The W&B model artifact of training run ``run_id`` (the name W&B's own integrations use)."""
    return f"model-{run_id}"


def log_model_artifact(wandb_run: Any, run_id: str, files: list[Path], aliases: list[str],
                       metadata: dict[str, Any]) -> None:
    """A new version of ``model-<run_id>`` (type ``model``) holding ``files`` under their own names.

    The files are referenced where they are (``immutable``: the run folder's files are written once, atomically),
    not copied to W&B's staging folder, so an offline run's artifact is uploaded from the run folder by ``wandb sync``.
    """
    import wandb

    artifact = wandb.Artifact(model_artifact_name(run_id), type="model", metadata=metadata)
    for path in files:
        artifact.add_file(str(Path(path).resolve()), name=Path(path).name, policy="immutable")
    wandb_run.log_artifact(artifact, aliases=aliases)


def log_export(run_dir: Path, settings: dict[str, Any], files: list[Path], aliases: list[str],
               metadata: dict[str, Any]) -> str | None:
    """Log an export's files as a version of the training run's model artifact, from a W&B run of its own (job
    type ``export``, grouped with the training run): reopening the training run offline would start a second
    offline folder with its id, whose sync would replace the training history. Returns the sync command when
    offline, else None."""
    import wandb

    mode, _ = resolve_wandb_mode(settings.get("wandb_mode"))
    if mode == "disabled":
        return None
    run = wandb.init(project=settings.get("wandb_project"), entity=settings.get("wandb_entity"), dir=str(run_dir),
                     mode=mode, job_type="export", group=run_dir.name, name=f"{run_dir.name}-export",
                     config={"training_run_id": settings["wandb_run_id"], "run_name": run_dir.name},
                     settings=wandb.Settings(silent=True, console="off"))
    try:
        log_model_artifact(run, settings["wandb_run_id"], files, aliases, metadata)
    finally:
        run.finish()
    return f"wandb sync {Path(run.dir).parent}" if mode == "offline" else None


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
