"""The CUDA path, end to end: every test here needs a GPU and skips without one (`pytest -m gpu`).

No GPU has run these yet in CI; benchmarks/gpu_checks.sh runs them on a lent GPU machine, together with the speed
and sync measurements, and the README's GPU section says what has run there. Two ranks share one GPU over gloo
(--dist-backend gloo), so a one-GPU machine checks the multi-process path too; NCCL needs two GPUs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, free_port, max_weight_difference, run_command, run_processes, train_command

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE
from gan.checkpointing import CHECKPOINTS

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _flags(data_dir, output_dir, run_name, *extra):
    return ["--data-dir", str(data_dir), "--split", "test", "--no-download", "--output-dir", str(output_dir),
            "--run-name", run_name, "--report-to", "none", "--eval-every", "0", "--log-every", "10", *extra]


def _gpu_launch(*flags, processes: int = 2) -> list[str]:
    """``processes`` ranks on this machine's GPUs through launch/multi_gpu.yaml; with more ranks than GPUs they
    share them, which only gloo allows."""
    config = str(ROOT / "launch" / "multi_gpu.yaml")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
            "--num_processes", str(processes), "--main_process_port", str(free_port()), "train_ddp.py", *flags]


def _config(run_dir: Path) -> dict:
    return json.loads((run_dir / CONFIG_FILE).read_text())


# ---------------------------------------------------------------- nn.SyncBatchNorm, two ranks on one GPU over gloo

BATCH, CHANNELS, SIZE = 16, 5, 6
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 2e-2}


def _bn_inputs(precision: str):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator) * torch.linspace(0.1, 3, CHANNELS)[:, None, None]
         + torch.linspace(-2, 5, CHANNELS)[:, None, None])
    upstream = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator)
    return x.cuda().to(DTYPES[precision]), upstream.cuda().to(DTYPES[precision])


def _bn_run(layer: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """Two forwards (running statistics move), then one differentiated: in training mode, with the layer's
    parameters frozen (the discriminator in the G step), or in eval mode (running statistics, no sync)."""
    x = x.clone().requires_grad_(True)
    layer(x)
    layer(x)
    if mode == "frozen":
        layer.requires_grad_(False)
    if mode == "eval":
        layer.eval()
    y = layer(x)
    (y.float() * upstream.float()).sum().backward()
    result = {"output": y.detach(), "input_grad": x.grad, "running_mean": layer.running_mean.clone(),
              "running_var": layer.running_var.clone()}
    if mode == "train":
        result.update(weight_grad=layer.weight.grad.clone(), bias_grad=layer.bias.grad.clone())
    return result


def _syncbn_worker(rank: int, world_size: int, port: int, precision: str, mode: str, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        x, upstream = _bn_inputs(precision)
        shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        result = _bn_run(torch.nn.SyncBatchNorm(CHANNELS).cuda(), x[shard], upstream[shard], mode)
        for key in ("weight_grad", "bias_grad"):  # per-rank partial sums (DDP averages them): summed to compare
            if key in result:
                dist.all_reduce(result[key])
        queue.put((rank, {key: value.float().cpu() for key, value in result.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["train", "frozen", "eval"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_syncbatchnorm_over_gloo_on_one_gpu_matches_one_batchnorm(precision, mode):
    results = run_processes(_syncbn_worker, 2, free_port(), precision, mode, timeout=180)
    x, upstream = _bn_inputs(precision)
    reference = _bn_run(torch.nn.BatchNorm2d(CHANNELS).cuda(), x, upstream, mode)
    reference = {key: value.float().cpu() for key, value in reference.items()}
    tolerance = TOLERANCE[precision]
    for rank, shard in ((0, slice(0, BATCH // 2)), (1, slice(BATCH // 2, BATCH))):
        got = results[rank]
        for key in ("output", "input_grad"):
            torch.testing.assert_close(got[key], reference[key][shard], atol=tolerance, rtol=tolerance, msg=key)
        for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            if key in reference:
                torch.testing.assert_close(got[key], reference[key], atol=tolerance, rtol=tolerance, msg=key)


# ---------------------------------------------------------------- whole runs on the GPU


def test_gpu_fp16_skipped_steps_match_the_loss_scale_history(shared_data, tmp_path):
    run_command(train_command(*_flags(shared_data, tmp_path, "fp16", "--max-steps", "60", "--mixed-precision",
                                      "fp16", "--log-every", "1")))
    history = json.loads((tmp_path / "fp16" / CHECKPOINTS / "step_60" / "trainer_state.json").read_text())["history"]
    scales = [65536.0] + [row["loss_scale"] for row in history]  # GradScaler's initial scale, then each step's
    halvings = sum(round(math.log2(before / after)) for before, after in zip(scales[:-1], scales[1:], strict=True)
                   if after < before)
    assert _config(tmp_path / "fp16")["skipped_steps"] == halvings == history[-1]["skipped_steps"]


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_gpu_the_steady_state_step_does_not_synchronize(shared_data, tmp_path, precision):
    """CUDA's sync debug mode warns at every synchronizing call: none between sync points (every 10 steps)."""
    script = f"""
import warnings, torch, gan.trainer
from gan.config import TrainConfig
syncs, current = {{}}, {{"step": 0}}
train_step = gan.trainer.train_step
def counted(*args, **kwargs):
    current["step"] += 1
    return train_step(*args, **kwargs)
gan.trainer.train_step = counted
def show(message, *args, **kwargs):
    if current["step"]:
        syncs[current["step"]] = syncs.get(current["step"], 0) + 1
warnings.showwarning = show
warnings.simplefilter("always")
torch.cuda.set_sync_debug_mode("warn")
gan.trainer.train(TrainConfig(data_dir={str(shared_data)!r}, split="test", no_download=True, max_steps=40,
    log_every=10, sample_every=10, checkpoint_every=1000, eval_every=0, report_to="none",
    mixed_precision={precision!r}, output_dir={str(tmp_path)!r}, run_name="syncs"))
torch.cuda.set_sync_debug_mode(0)
print("SYNCS", {{step: n for step, n in syncs.items() if step > 1 and step % 10}})
"""
    result = run_command([sys.executable, "-c", script])
    assert "SYNCS {}" in result.stdout, result.stdout[-3000:]


def test_gpu_one_and_two_ranks_on_one_gpu_train_the_same_model(shared_data, tmp_path):
    flags = ("--max-steps", "20", "--dtype", "float64", "--ema-decay", "0", "--dist-backend", "gloo")
    run_command(train_command(*_flags(shared_data, tmp_path, "one", *flags)), timeout=600)
    run_command(_gpu_launch(*_flags(shared_data, tmp_path, "two", *flags)), timeout=600)
    assert _config(tmp_path / "two")["world_size"] == 2 and _config(tmp_path / "two")["sync_bn"] is True
    assert max_weight_difference(tmp_path / "one" / GENERATOR_FILE, tmp_path / "two" / GENERATOR_FILE) <= 1e-4


def test_gpu_a_two_rank_checkpoint_resumes_on_one_rank(shared_data, tmp_path):
    flags = ("--max-steps", "20", "--checkpoint-every", "10", "--dist-backend", "gloo")
    run_command(_gpu_launch(*_flags(shared_data, tmp_path, "run", *flags)), timeout=600)
    run_command(train_command(*_flags(shared_data, tmp_path, "fork", "--resume",
                                      str(tmp_path / "run" / CHECKPOINTS / "step_10"))), timeout=600)
    config = _config(tmp_path / "fork")
    assert [launch["world_size"] for launch in config["launches"]] == [2, 1] and config["final_step"] == 20


def test_gpu_sigterm_to_a_two_rank_launch_checkpoints_and_resumes(shared_data, tmp_path):
    log = tmp_path / "launch.log"
    command = _gpu_launch(*_flags(shared_data, tmp_path, "stopped", "--max-steps", "100000", "--log-every", "5",
                                  "--checkpoint-every", "100000", "--dist-backend", "gloo"))
    with open(log, "w") as output:
        launcher = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "step 20/" not in log.read_text():
            assert time.monotonic() < deadline and launcher.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    checkpoints = list((tmp_path / "stopped" / CHECKPOINTS).glob("step_*"))
    assert len(checkpoints) == 1, log.read_text()[-3000:]
    step = int(checkpoints[0].name.split("_")[1])
    resumed = run_command(train_command(*_flags(shared_data, tmp_path, "stopped", "--resume", "latest",
                                                "--max-steps", str(step + 10))), timeout=600)
    assert f"at step {step}" in resumed.stdout


def test_gpu_deterministic_runs_are_identical(shared_data, tmp_path):
    for name in ("a", "b"):
        run_command(train_command(*_flags(shared_data, tmp_path, name, "--max-steps", "50", "--deterministic")))
    assert max_weight_difference(tmp_path / "a" / GENERATOR_FILE, tmp_path / "b" / GENERATOR_FILE) == 0


def test_gpu_run_exports_and_evaluates_with_cuda_hidden(shared_data, tmp_path):
    run_command(train_command(*_flags(shared_data, tmp_path, "gpu", "--max-steps", "50", "--mixed-precision", "bf16")))
    assert _config(tmp_path / "gpu")["device"] == "cuda"
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    run_command([sys.executable, "export.py", str(tmp_path / "gpu")], env=hidden)
    run_command([sys.executable, "-m", "gan.evaluate", str(tmp_path / "gpu" / "generator.onnx"), "--n", "1000",
                 "--data-dir", str(shared_data), "--split", "test"], env=hidden)
    report = json.loads((tmp_path / "gpu" / "export_report.json").read_text())
    assert report["passed"]
