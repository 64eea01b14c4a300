"""What the studies (tune_recipe.py, conditional_study.py) share: a log with elapsed times, and training a run in a
subprocess unless a finished one is already there."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE  # noqa: E402

Log = Callable[[str], None]


def elapsed_log() -> Log:
    """A function that prints a message to stderr after the seconds since this call."""
    started = time.perf_counter()
    return lambda message: print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)


def is_finished(run_dir: Path) -> bool:
    """Does ``run_dir`` hold a finished training run (its generator and config)?"""
    return (run_dir / GENERATOR_FILE).is_file() and (run_dir / CONFIG_FILE).is_file()


def train(command: list[str], log_path: Path, label: str, log: Log) -> float:
    """Run the training ``command`` from the repository root with its output in ``log_path``; its seconds.

    A failed run stops the study with the log's last lines.
    """
    log("$ " + shlex.join(command))
    start = time.perf_counter()
    with open(log_path, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise SystemExit(f"training {label} failed (exit {done.returncode}); last lines of {log_path}:\n{tail}")
    log(f"trained {label} in {seconds:.0f} s")
    return seconds
