"""What several test modules share: paths, the data folder, and running real processes."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from gan.export import MODEL_FILE, fp16_path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KMNIST_DATA_DIR", ROOT.parent / "shared" / "data"))


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


def run_processes(target: Callable, world_size: int, *args, timeout: float = 300) -> dict:
    """Run ``target(rank, world_size, *args, queue)`` in ``world_size`` spawned processes, each of which puts
    ``(rank, result)`` on the queue; return {rank: result} once every process has exited cleanly."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = ByValueQueue(context)
    processes = [context.Process(target=target, args=(rank, world_size, *args, queue)) for rank in range(world_size)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=timeout) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, f"process exited with {process.exitcode}"
    return results


class ByValueQueue:
    """A multiprocessing queue whose items travel pickled by value. torch's own reductions would send a tensor as a
    handle to its sender's shared memory, which is gone once the sender exits before the item is read
    (FileNotFoundError in multiprocessing's resource_sharer): a race that failed a CI run."""

    def __init__(self, context):
        self._queue = context.Queue()

    def put(self, item) -> None:
        self._queue.put(pickle.dumps(item))

    def get(self, timeout: float):
        return pickle.loads(self._queue.get(timeout=timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the generator that the `run` fixture (conftest.py) trains with train_ddp.py and exports with export.py

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


# --- a small generator saved as a run folder, in a second: for the evaluation tests (no training run needed)

SMALL_LATENT_DIM, SMALL_BASE_WIDTH = 16, 8  # small: the ONNX export stays quick


def save_small_run(run_dir: Path, **config: object):
    """A run folder (config.json with ``config`` added, generator.safetensors) of a small untrained generator.

    Returns the generator (eval mode). Its BatchNorm statistics come from one pass in train mode and its last layer
    is scaled up, so that its images vary (fresh weights give an almost flat grey).
    """
    import torch

    from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, save_generator
    from gan.atomic_write import write_json
    from gan.models import Generator

    torch.manual_seed(0)
    num_classes = int(config.get("num_classes", 0))  # > 0: a class-conditional generator
    # a conditional one as training builds it: with conditional BatchNorm
    generator = Generator(SMALL_LATENT_DIM, SMALL_BASE_WIDTH, num_classes, class_norm=bool(num_classes))
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the one pass
    with torch.no_grad():
        labels = torch.arange(512) % num_classes if num_classes else None
        generator.train()(torch.randn(512, SMALL_LATENT_DIM), labels)
        generator.main[-2].weight.mul_(8)  # the last layer's N(0, 0.02) weights alone give tanh inputs ~ 0.1
        for affine in getattr(generator, "class_norm", []):  # classes that differ in every layer, as trained ones do
            affine.scale.weight.normal_(0, 0.2)
            affine.shift.weight.normal_(0, 0.2)
    generator.eval()
    conditional = {"class_norm": True, "class_loss_weight": 0.1, "mismatch_loss_weight": 1.0} if num_classes else {}
    write_json(run_dir / CONFIG_FILE, {"latent_dim": SMALL_LATENT_DIM, "base_width": SMALL_BASE_WIDTH, **conditional,
                                       **config})
    if num_classes:  # with the safetensors metadata a finished conditional run writes (num_classes, class names)
        from gan.artifacts import save_final_generators

        save_final_generators(run_dir, generator, None, step=int(config.get("final_step", 0)))
    else:
        save_generator(generator, run_dir / GENERATOR_FILE)
    return generator


# --- a small class-conditional generator exported by export.py: the conditional twin of the `run` fixture, made in
# seconds without training

CONDITIONAL_RUN_NAME = "conditional-fixture"
CONDITIONAL_NUM_CLASSES = 10
# What export.py needs from config.json besides the sizes: provenance, as a finished run of train_ddp.py records it.
CONDITIONAL_RUN_CONFIG = {"num_classes": CONDITIONAL_NUM_CLASSES, "split": "test", "run_name": CONDITIONAL_RUN_NAME,
                          "final_step": 0, "generator_weights": "trained", "seed": 0}


def export_small_conditional_run(tmp_path_factory) -> ExportedRun:
    """:func:`save_small_run` with 10 classes, exported as ``export.py --fp16`` does (in this process: the
    ``run`` fixture covers the real command): made once per pytest session (later calls read it back), for the
    ``conditional_run`` fixture of each test module that needs one."""
    import contextlib
    import io
    import shutil

    from gan.export import parse_export_config, run_export

    base = tmp_path_factory.getbasetemp() / "conditional-run"
    run_dir = base / "runs" / CONDITIONAL_RUN_NAME
    stdout_file = base / "export.stdout"
    if not stdout_file.is_file():
        shutil.rmtree(base, ignore_errors=True)
        run_dir.mkdir(parents=True)
        save_small_run(run_dir, **CONDITIONAL_RUN_CONFIG)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            run_export(parse_export_config([str(run_dir), "--fp16"]))
        stdout_file.write_text(printed.getvalue())
    return ExportedRun(run_dir, stdout_file.read_text())


# --- what a diverged run or a damaged file leaves behind: broken copies of the exported run's files

NAN_TENSORS = ("main.0.weight", "main.1.running_var", "main.3.weight")  # a weight, a BatchNorm buffer, a weight


def nan_onnx_model(model: Path, target: Path) -> Path:
    """A copy of the ONNX file ``model`` whose largest weight is all NaN, as exported from a diverged run."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    weight = max(proto.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    values = numpy_helper.to_array(weight).copy()
    values[...] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(target))
    return target


def nan_weights_run(run_dir: Path, target: Path) -> Path:
    """A copy of the run folder's files (not its checkpoints) whose generator holds NaN/inf in :data:`NAN_TENSORS`.

    The weights file keeps its safetensors metadata: only the numbers are broken.
    """
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from gan.artifacts import GENERATOR_FILE

    target.mkdir(parents=True)
    for path in run_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, target / path.name)
    weights = target / GENERATOR_FILE
    with safe_open(str(weights), "pt") as file:
        metadata = file.metadata()
    state = load_file(str(weights))
    state[NAN_TENSORS[0]][0, 0] = float("nan")
    state[NAN_TENSORS[1]][3] = float("inf")
    state[NAN_TENSORS[2]].fill_(float("nan"))
    save_file(state, str(weights), metadata=metadata)
    return target


def assert_same_weights(a: Path, b: Path) -> None:
    """The two safetensors files hold the same tensors, bit for bit."""
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), f"{key} differs between {a} and {b}"


def max_weight_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between the same tensors of two safetensors files."""
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max((left[k].double() - right[k].double()).abs().max().item() for k in left)


class FileCreatingPayload:
    """A pickled object whose unpickling creates the file ``marker``: proof that a loader ran foreign code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


# --- small exported runs for the model card and Hub tests: untrained generators, exported in-process in seconds

FINAL_STEP = 7
# What a finished run of train_ddp.py records besides the sizes, for export.py and for the card's recipe.
RUN_CONFIG = {"split": "test", "final_step": FINAL_STEP, "generator_weights": "trained", "seed": 0, "world_size": 2,
              "mixed_precision": "bf16", "batch_size": 64, "epochs": 3, "lr_generator": 2e-4,
              "lr_discriminator": 1e-4, "ema_decay": 0.0}


def exported_small_run(tmp_path_factory, num_classes: int) -> Path:
    """A small untrained generator saved as a finished run and exported in-process with the real exporter (with
    --fp16 when unconditional): made once per pytest session, for test_card.py and test_hub.py. Tests work on a
    copy (:func:`copy_run`): the card writes into the run folder."""
    import contextlib
    import io
    import shutil

    from gan.card import CARD_FILE, SAMPLES_FILE
    from gan.export import ExportConfig, run_export

    name = "card-conditional" if num_classes else "card-unconditional"
    base = tmp_path_factory.getbasetemp() / "card-runs"
    run_dir, done = base / name, base / f"{name}.done"
    if not done.is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        save_small_run(run_dir, **RUN_CONFIG, num_classes=num_classes, run_name=name)
        with contextlib.redirect_stdout(io.StringIO()):
            run_export(ExportConfig(run_dir=str(run_dir), fp16=not num_classes))
        for written in (CARD_FILE, SAMPLES_FILE):  # an exporter that writes the card: the tests write their own
            (run_dir / written).unlink(missing_ok=True)
        done.touch()
    return run_dir


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def write_evaluation(run_dir: Path, conditional: bool = False) -> dict:
    """An evaluation.json with the keys `python -m gan.evaluate RUN_DIR` writes (gan.evaluate.run_evaluation) and
    distinct numbers, so that each can be found again; the real evaluation needs the data and a minute."""
    import json

    from gan.artifacts import EVALUATION_FILE

    metrics = {"fid": 41.5, "kid": 12.25, "kid_std": 1.5, "classifier_score": 7.5, "class_coverage": 0.953,
               "confident_share": 0.8, "precision": 0.625, "recall": 0.4375}
    if conditional:
        metrics |= {"class_accuracy": 0.875, "class_fid_mean": 60.5, "class_fid_worst": 90.25,
                    "class_fid_worst_class": 4, "class_precision_mean": 0.5, "class_recall_mean": 0.375}
    payload = {
        "source": str(run_dir), "kind": "pytorch", "num_classes": 10 if conditional else 0, "samples": 2000,
        "seed": 0,
        "reference": {"data_dir": "data", "split": "test", "images": 10000,
                      "chosen_by": {"data_dir": "fallback", "split": "fallback"}},
        "settings": {"k": 3, "kid_subsets": 100, "confidence_threshold": 0.9},
        "classifier": {"weights": "gan/assets/kmnist_classifier.safetensors", "weights_sha256": "ab" * 32,
                       "holdout_accuracy": 0.969, "trained_on": {"split": "test", "images": 10000}},
        "metrics": metrics,
        "real_floor": {"images": [5000, 5000], "metrics": {"fid": 0.83, "precision": 0.873, "recall": 0.875}},
        "seconds": {"generate": 0.2}, "versions": {"python": "3.11"},
    }
    (run_dir / EVALUATION_FILE).write_text(json.dumps(payload))
    return payload
