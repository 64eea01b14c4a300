"""End-to-end runs of train_ddp.py in real processes (1 process, and 2 gloo processes through accelerate)."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch
from helpers import run_command, train_command
from safetensors.torch import load_file

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, load_generator


def _flags(data_dir, output_dir, run_name, *extra):
    return [
        "--data-dir",
        str(data_dir),
        "--split",
        "test",
        "--no-download",
        "--output-dir",
        str(output_dir),
        "--run-name",
        run_name,
        "--log-every",
        "5",
        "--report-to",
        "none",
        "--eval-every",
        "0",
        *extra,
    ]


def _logged_losses(stdout: str) -> list[tuple[float, float]]:
    return [(float(d), float(g)) for d, g in re.findall(r"d_loss (\S+) g_loss (\S+)", stdout)]


@pytest.fixture(scope="module")
def world_size_runs(shared_data, tmp_path_factory):
    """20 steps with 1 and with 2 processes, same seed and global batch, in float64 (see the test's docstring)."""
    out = tmp_path_factory.mktemp("runs")
    for processes in (1, 2):
        run_command(
            train_command(
                *_flags(shared_data, out, f"p{processes}", "--max-steps", "20", "--dtype", "float64",
                        "--ema-decay", "0"),
                processes=processes,
            ),
            timeout=400,
        )
    return out


@pytest.mark.slow  # two real runs, one of them 2 gloo processes
@pytest.mark.timeout(900)  # the fixture's two runs may take 400 s each on a loaded machine
def test_world_size_invariance(world_size_runs):
    """Sharded data + synchronized BatchNorm + per-step global noise: 2 processes train the 1-process model.

    Run in float64 so that the comparison is not swamped by fp32 rounding noise, which GAN training amplifies
    (two fp32 runs of ONE process with 1 and 2 OpenMP threads already differ by ~3e-3 after 20 steps).
    """
    one = load_file(str(world_size_runs / "p1" / GENERATOR_FILE))
    two = load_file(str(world_size_runs / "p2" / GENERATOR_FILE))
    assert one.keys() == two.keys()
    worst = max((one[k].double() - two[k].double()).abs().max().item() for k in one)
    assert worst <= 1e-4, f"1 vs 2 processes differ by {worst}"
    moved = max(
        (one[k].double() - load_generator(world_size_runs / "p1")[0].state_dict()[k].double())
        .abs()
        .max()
        .item()
        for k in one
    )
    assert moved == 0
    config_two = json.loads((world_size_runs / "p2" / CONFIG_FILE).read_text())
    config_one = json.loads((world_size_runs / "p1" / CONFIG_FILE).read_text())
    assert config_two["world_size"] == 2 and config_two["sync_bn"] is True
    assert config_one["world_size"] == 1 and config_one["sync_bn"] is False
    assert config_two["final_step"] == config_one["final_step"] == 20
    # and the runs did learn something: the weights moved away from the shared initialisation
    torch.manual_seed(0)
    from gan.models import Generator

    initial = Generator().state_dict()
    assert (one["main.0.weight"] - initial["main.0.weight"]).abs().max() > 1e-3


@pytest.mark.slow  # a real 15-step run
def test_bf16_run_on_cpu(shared_data, tmp_path):
    result = run_command(
        train_command(
            *_flags(
                shared_data, tmp_path, "bf16", "--max-steps", "15", "--mixed-precision", "bf16", "--ema-decay", "0"
            )
        )
    )
    losses = _logged_losses(result.stdout)
    assert len(losses) == 3 and all(math.isfinite(v) for pair in losses for v in pair)
    generator, config = load_generator(tmp_path / "bf16")
    assert config["mixed_precision"] == "bf16" and config["final_step"] == 15
    assert config["channels_last"] is True and config["cpu_kernels"] is True  # the CPU defaults, bf16 GEMM included
    images = generator(torch.randn(4, config["latent_dim"]))
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()
    assert images.std() > 0.01  # not a constant image


def test_invalid_flags_are_all_reported_before_work(tmp_path):
    result = run_command(
        [
            sys.executable,
            "train_ddp.py",
            "--epochs",
            "0",
            "--lr",
            "-1",
            "--beta2",
            "1.5",
            "--output-dir",
            str(tmp_path),
        ],
        check=False,
    )
    assert result.returncode == 2
    for flag in ("--epochs", "--lr", "--beta2"):
        assert flag in result.stderr
    assert not any(tmp_path.iterdir())


def test_missing_training_images_is_a_clear_error(shared_data, tmp_path):
    result = run_command(
        [
            sys.executable,
            "train_ddp.py",
            "--data-dir",
            str(shared_data),
            "--no-download",
            "--output-dir",
            str(tmp_path),
        ],
        check=False,
    )
    assert result.returncode == 1
    assert "train-images-idx3-ubyte.gz is missing" in result.stderr and "--split test" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # accelerate launch of 2 processes
def test_batch_must_divide_by_processes(shared_data, tmp_path):
    result = run_command(
        train_command(*_flags(shared_data, tmp_path, "odd", "--batch-size", "127"), processes=2),
        check=False,
        timeout=300,
    )
    assert result.returncode != 0
    assert "--batch-size 127" in result.stderr and "2 processes" in result.stderr


@pytest.mark.slow  # the CLI form of a refusal that tests/test_devices.py checks in-process
def test_fp16_on_cpu_is_refused_with_advice(shared_data, tmp_path):
    result = run_command(
        train_command(*_flags(shared_data, tmp_path, "fp16", "--mixed-precision", "fp16", "--cpu")),
        check=False,
    )
    assert result.returncode == 2 and "--mixed-precision bf16" in result.stderr


@pytest.mark.parametrize(
    ("make", "flags", "status", "expected"),
    [
        (lambda d: (d / "file").touch(), ["--output-dir", "{d}/file"], 2, "is a file, but a folder is needed"),
        (lambda d: (d / "file").touch(), ["--output-dir", "{d}/file/runs"], 2, "is a file, but a folder is needed"),
        (lambda d: (d / "file").touch(), ["--data-dir", "{d}/file"], 2, "--data-dir"),
        (lambda d: (d / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz").mkdir(parents=True),
         ["--data-dir", "{d}"], 1, "is a folder, not the data file"),
        (lambda d: None, ["--run-name", "x" * 300], 2, "--run-name is 300 bytes long"),
    ],
)
def test_bad_paths_are_one_line_before_any_work(shared_data, tmp_path, make, flags, status, expected, capsys):
    import train_ddp  # in this process: the same main() as the command, without a new interpreter per case

    make(tmp_path)
    flags = [flag.format(d=tmp_path) for flag in flags]
    argv = ["--data-dir", str(shared_data), "--split", "test", "--no-download", "--report-to", "none",
            "--output-dir", str(tmp_path / "runs"), *flags]
    try:
        returned = train_ddp.main(argv)
    except SystemExit as exit_:  # problems found while parsing
        returned = exit_.code
    stderr = capsys.readouterr().err
    assert returned == status and expected in stderr and "Traceback" not in stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder was made
