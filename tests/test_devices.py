"""gan/devices.py: device-dependent defaults resolved once, and the warning for bf16 on CPUs that emulate it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gan import devices
from gan.config import SetupError, TrainConfig


@pytest.fixture(autouse=True)
def one_gpu_and_one_local_process(monkeypatch):
    """The fake "cuda" launches below run on a machine with one GPU, one process per machine unless a test says."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")


def _accelerator(device: str = "cpu", mixed_precision: str = "no", processes: int = 1):
    """What resolve_for_device reads of an Accelerator, for launches this machine cannot make."""
    return SimpleNamespace(device=torch.device(device), mixed_precision=mixed_precision, num_processes=processes,
                           is_main_process=True)


@pytest.mark.parametrize(("flags", "expected_warning"), [({"avx2", "fma"}, True), ({"avx2", "avx512_bf16"}, False),
                                                         ({"avx2", "amx_bf16"}, False)])
def test_bf16_warns_only_on_cpus_without_native_bf16(monkeypatch, capsys, flags, expected_warning):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    devices.resolve_for_device(TrainConfig(mixed_precision="bf16"), _accelerator(mixed_precision="bf16"))
    err = capsys.readouterr().err
    assert ("--mixed-precision no" in err and "10x slower" in err) is expected_warning, err
    assert devices.cpu_description()["native_bf16"] is not expected_warning


def test_fp32_and_gpu_bf16_never_warn(monkeypatch, capsys):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    devices.resolve_for_device(TrainConfig(), _accelerator())
    devices.resolve_for_device(TrainConfig(), _accelerator("cuda", "bf16"))
    assert capsys.readouterr().err == ""


def test_device_defaults_are_resolved_once_into_the_config():
    on_cpu = devices.resolve_for_device(TrainConfig(), _accelerator("cpu", "no", processes=2))
    resolved = (on_cpu.channels_last, on_cpu.cpu_kernels, on_cpu.sync_bn, on_cpu.mixed_precision)
    assert resolved == (True, True, True, "no")
    on_gpu = devices.resolve_for_device(TrainConfig(), _accelerator("cuda", "bf16"))
    assert (on_gpu.channels_last, on_gpu.cpu_kernels, on_gpu.sync_bn, on_gpu.mixed_precision) == (
        False, False, False, "bf16")
    chosen = TrainConfig(channels_last=False, cpu_kernels=False, sync_bn=False)
    kept = devices.resolve_for_device(chosen, _accelerator("cpu", "no", processes=2))
    assert (kept.channels_last, kept.cpu_kernels, kept.sync_bn) == (False, False, False)


def test_impossible_launches_are_refused_together():
    with pytest.raises(SetupError) as error:
        devices.resolve_for_device(TrainConfig(batch_size=127), _accelerator("cpu", "fp16", processes=2))
    assert "--batch-size 127" in str(error.value) and "--mixed-precision fp16 needs a GPU" in str(error.value)


def test_cpu_description_reads_this_machine():
    described = devices.cpu_description()
    assert described["capability"] == torch.backends.cpu.get_cpu_capability()
    assert described["native_bf16"] in (True, False, None)


def test_a_run_records_the_cpu_it_trained_on(run):
    from gan.artifacts import read_config

    recorded = read_config(run.run_dir)
    assert recorded["cpu"] == devices.cpu_description()
    assert recorded["tf32"] is False  # fp32 means full fp32 unless --tf32


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_is_chosen_explicitly_for_matmuls_and_convolutions(enabled):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        devices.set_tf32(enabled)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (enabled, enabled)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_more_processes_than_gpus_on_a_machine_is_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(SetupError) as error:
        devices.resolve_for_device(TrainConfig(), _accelerator("cuda", "no", processes=2))
    assert "2 processes on this machine but 1 GPU(s)" in str(error.value) and "--num_processes 1" in str(error.value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process per GPU on each of two machines
    devices.resolve_for_device(TrainConfig(), _accelerator("cuda", "no", processes=2))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # CPU processes need no GPU
    devices.resolve_for_device(TrainConfig(), _accelerator("cpu", "no", processes=2))


def test_a_launch_config_with_use_cpu_trains_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # even where CUDA is there
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # what `accelerate launch` sets for `use_cpu: true`
    assert devices.make_accelerator(TrainConfig()).device.type == "cpu"
