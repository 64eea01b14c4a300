"""Every noise vector of the project, drawn from (seed, purpose, index) with numpy.

Training steps, the fixed grid, the final samples, evaluation, ``python -m gan.generate`` and the export check
all call :func:`latent_noise`, so one seed gives the same noise wherever it is used, with PyTorch or with
onnxruntime alone (this module needs numpy only). Rows are drawn one after another from one stream, so the
first 64 of 1,000 samples are the 64 samples of a smaller request with the same seed and purpose.
"""

from __future__ import annotations

import numpy as np

# Each purpose has its own stream: the grid's noise never repeats a training step's.
PURPOSES = {"step": 1, "grid": 2, "samples": 3, "verify": 4}
GRID_SIZE = 64  # the chapter's fixed grid: 64 noise vectors, shown 8x8


def latent_noise(seed: int, purpose: str, count: int, latent_dim: int, index: int = 0) -> np.ndarray:
    """Standard normal noise float32 [count, latent_dim] for ``purpose`` (a key of :data:`PURPOSES`).

    ``index`` separates the draws of one purpose (the training step, for ``"step"``). ``seed`` and ``index``
    must be non-negative integers.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"noise purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    for name, value in (("seed", seed), ("index", index)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"the noise {name} must be a non-negative integer, got {value!r}")
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"the number of noise vectors must be a positive integer, got {count!r}")
    sequence = np.random.SeedSequence([int(seed), PURPOSES[purpose], int(index)])
    return np.random.Generator(np.random.PCG64(sequence)).standard_normal((int(count), latent_dim), np.float32)


def step_noise(seed: int, step: int, global_batch_size: int, latent_dim: int, process_index: int = 0,
               num_processes: int = 1) -> np.ndarray:
    """This process's contiguous share of step ``step``'s global noise batch.

    The whole global batch depends only on (seed, step), so a run sees the same noise whatever the number of
    processes; each process takes its slice in the same order as the data shards.
    """
    local = global_batch_size // num_processes
    noise = latent_noise(seed, "step", global_batch_size, latent_dim, index=step)
    return noise[process_index * local : (process_index + 1) * local]
