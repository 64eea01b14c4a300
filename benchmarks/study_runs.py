"""What the studies (tune_recipe.py, conditional_study.py) share: their common flags, a log with elapsed times,
training a run in a subprocess unless a finished one is already there, and the JSON of every number."""

from __future__ import annotations

import argparse
import json
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


def study_parser(description: str, variants: list[str], default_variants: list[str], work_dir: str,
                 out_help: str) -> argparse.ArgumentParser:
    """The flags every study takes: seeds, variants, data, where the runs go, the evaluation's samples and seed,
    --retrain and --out; a study adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=default_variants, choices=variants)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work-dir", type=Path, default=Path(work_dir),
                        help="run folders and training logs go here; finished runs are reused")
    parser.add_argument("--n", type=int, default=10_000, help="samples per generator")
    parser.add_argument("--eval-seed", type=int, default=0, help="seeds the latent noise (the same for all)")
    parser.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    parser.add_argument("--out", type=Path, help=f"write every number ({out_help}) as JSON here")
    return parser


def write_results(path: Path, payload: dict) -> None:
    """The study's numbers as JSON in ``path``, with the command that made them first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "python " + shlex.join(sys.argv), **payload}, indent=2) + "\n")
    print(f"wrote {path}")


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
