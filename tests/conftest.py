from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gan.export import MODEL_FILE, fp16_path

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


# --- a generator trained by train_ddp.py and exported by export.py: shared by the export/inference/examples tests

EXPORT_RUN_NAME = "export-fixture"
# 40 small steps (~10 s on 2 cores): enough for outputs far from the near-zero ones of the initial weights
# (std ~0.08, |max| ~0.45 instead of ~0.003), so that the 1e-5 comparisons are not trivially met.
EXPORT_TRAIN_STEPS = 40
EXPORT_TRAIN_BATCH = 32


@dataclass(frozen=True)
class ExportedRun:
    run_dir: Path
    export_stdout: str

    @property
    def model(self) -> Path:
        return self.run_dir / MODEL_FILE

    @property
    def fp16_model(self) -> Path:
        return fp16_path(self.model)


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> ExportedRun:
    """Train a few steps with train_ddp.py, then export with the real export.py CLI (once per session)."""
    base = tmp_path_factory.getbasetemp() / "exported-run"
    run_dir = base / "runs" / EXPORT_RUN_NAME
    stdout_file = base / "export.stdout"
    if not stdout_file.is_file():
        shutil.rmtree(base, ignore_errors=True)
        flags = ["--cpu", "--data-dir", str(shared_data), "--split", "test", "--no-download", "--report-to", "none",
                 "--eval-every", "0"]
        flags += ["--max-steps", str(EXPORT_TRAIN_STEPS), "--batch-size", str(EXPORT_TRAIN_BATCH)]
        run_command(train_command(*flags, "--output-dir", str(base / "runs"), "--run-name", EXPORT_RUN_NAME))
        export = run_command([sys.executable, "export.py", str(run_dir), "--fp16"])
        stdout_file.write_text(export.stdout)
    return ExportedRun(run_dir, stdout_file.read_text())


@pytest.fixture(scope="session")
def onnx_generator(run: ExportedRun):
    from gan.inference import OnnxGenerator

    return OnnxGenerator(run.model)
