from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KMNIST_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding KMNIST/raw/ with the official 10,000-image test split."""
    if not (SHARED_DATA / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"the KMNIST test split is missing under {SHARED_DATA}; set KMNIST_DATA_DIR to its folder"
        )
    return SHARED_DATA


def run_command(
    args: list[str], timeout: float = 300, env: dict[str, str | None] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a real process from the repository root and return it (stdout/stderr as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: remove the variable
    completed = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {completed.returncode}\n--- stdout\n{completed.stdout[-4000:]}\n"
            f"--- stderr\n{completed.stderr[-4000:]}"
        )
    return completed


def train_command(*flags: str, processes: int = 1) -> list[str]:
    """`python train_ddp.py ...` for one process, `accelerate launch` with the CPU recipe for several."""
    if processes == 1:
        return [sys.executable, "train_ddp.py", *flags]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "launch" / "cpu_multi_process.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        "train_ddp.py",
        *flags,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
