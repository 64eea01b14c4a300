"""Generation latency on CPU: onnxruntime on the exported file vs eager PyTorch, in one process.

    python benchmarks/bench_onnx.py [RUN_DIR] [--runs 300] [--json results.json]

RUN_DIR defaults to the newest run under runs/; with none there, an untrained generator stands in (latency does
not depend on the weights' values). The generator is exported to a temporary file exactly as ``export.py`` does.
Calls are timed one by one, the engines interleaved in rounds so that load from other processes hits all of them
alike; the tables show medians. The first compares eager PyTorch at its default thread count with onnxruntime as
``gan.onnx_generator`` configures it; the second adds PyTorch with one thread and onnxruntime's thread settings (the
measurement behind ``gan.onnx_generator.DEFAULT_INTRA_OP_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from gan.artifacts import ArtifactError, load_generator  # noqa: E402
from gan.export import ExportError, export_onnx, newest_run  # noqa: E402
from gan.models import Generator  # noqa: E402
from gan.onnx_generator import DEFAULT_INTRA_OP_THREADS, INPUT_NAME, OUTPUT_NAME, session_options  # noqa: E402

BATCHES = (1, 64)
WARMUP = 20
ROUND_WARMUP = 2  # untimed calls at the start of each round: PyTorch re-sizes its thread pool between rounds

Engine = tuple[Callable[[], None], Callable[[], object]]  # (prepare, before each round; one generation call)


def time_calls(engines: dict[str, Engine], runs: int, round_size: int = 10) -> dict[str, list[float]]:
    """Seconds per call of each engine, ``runs`` calls each, interleaved in rounds of ``round_size`` calls."""
    for prepare, call in engines.values():
        prepare()
        for _ in range(WARMUP):
            call()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(0, runs, round_size):
        for name, (prepare, call) in engines.items():
            prepare()
            for _ in range(ROUND_WARMUP):
                call()
            for _ in range(round_size):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return times


def torch_engine(generator: Generator, z: torch.Tensor, threads: int) -> Engine:
    def call() -> torch.Tensor:
        with torch.inference_mode():
            return generator(z)

    return (lambda: torch.set_num_threads(threads)), call


def ort_engine(model: Path, z: np.ndarray, intra_op_threads: int, spinning: bool = True) -> Engine:
    options = session_options(intra_op_threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return (lambda: None), (lambda: session.run([OUTPUT_NAME], {INPUT_NAME: z}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default=None, help="training run (default: newest under runs/)")
    parser.add_argument("--runs", type=int, default=300, help="timed calls per engine and batch size")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = parser.parse_args(argv)

    if args.runs < 10:
        parser.error(f"--runs must be at least 10, got {args.runs}")
    try:
        run_dir = Path(args.run_dir) if args.run_dir else newest_run("runs")
    except ExportError:  # no run to load: latency does not depend on the weights' values
        run_dir = None
    try:
        generator = load_generator(run_dir)[0] if run_dir else Generator().eval()
    except ArtifactError as error:
        parser.error(str(error))
    source = str(run_dir) if run_dir else "an untrained generator (no finished run under runs/)"

    torch_threads = torch.get_num_threads()
    print(f"generator: {source}")
    print(
        f"torch {torch.__version__} ({torch_threads} threads), onnxruntime {ort.__version__}, "
        f"{os.cpu_count()} CPUs, {args.runs} timed calls per cell, medians in ms"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "generator.onnx"
        export_onnx(generator, model, {"purpose": "benchmark"})
        for batch in BATCHES:
            z = torch.randn(batch, generator.latent_dim, generator=torch.Generator().manual_seed(0))
            engines = {
                f"pytorch eager ({torch_threads} threads, default)": torch_engine(generator, z, torch_threads),
                "pytorch eager (1 thread)": torch_engine(generator, z, 1),
                f"onnxruntime intra_op={DEFAULT_INTRA_OP_THREADS} (chosen)": ort_engine(
                    model, z.numpy(), DEFAULT_INTRA_OP_THREADS
                ),
                "onnxruntime intra_op=default": ort_engine(model, z.numpy(), 0),
                "onnxruntime intra_op=default, no spinning": ort_engine(model, z.numpy(), 0, spinning=False),
            }
            times = time_calls(engines, args.runs)
            results[str(batch)] = {name: statistics.median(t) * 1e3 for name, t in times.items()}

    torch.set_num_threads(torch_threads)
    names = list(next(iter(results.values())))
    eager, chosen = names[0], names[2]
    print(f"\n{eager} vs {chosen}:")
    print(f"{'batch':>5} {'pytorch eager':>14} {'onnxruntime':>12} {'speedup':>8}")
    for batch, medians in results.items():
        print(f"{batch:>5} {medians[eager]:>14.3f} {medians[chosen]:>12.3f} {medians[eager] / medians[chosen]:>7.1f}x")
    print()
    print(f"{'engine / setting':<44}" + "".join(f"{'batch ' + b:>12}" for b in results))
    for name in names:
        print(f"{name:<44}" + "".join(f"{results[b][name]:>12.3f}" for b in results))
    if args.json is not None:
        args.json.write_text(json.dumps({"source": source, "medians_ms": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
