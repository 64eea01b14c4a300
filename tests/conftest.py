from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import (
    EXPORT_RUN_NAME,
    EXPORT_TRAIN_BATCH,
    EXPORT_TRAIN_STEPS,
    SHARED_DATA,
    ExportedRun,
    run_command,
    train_command,
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding KMNIST/raw/ with the official 10,000-image test split."""
    if not (SHARED_DATA / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"the KMNIST test split is missing under {SHARED_DATA}; set KMNIST_DATA_DIR to its folder"
        )
    return SHARED_DATA


# --- a generator trained by train_ddp.py and exported by export.py: shared by the export/inference/examples tests

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
    from gan.onnx_generator import OnnxGenerator

    return OnnxGenerator(run.model)
