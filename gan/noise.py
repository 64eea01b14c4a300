"""Every noise vector of the project, drawn from (seed, purpose, index) with numpy.

Training steps, the fixed grid, the final samples, evaluation, ``python -m gan.generate`` and the export check
all call :func:`latent_noise`, so one seed gives the same noise wherever it is used, with PyTorch or with
onnxruntime alone (this module needs numpy only). Rows are drawn one after another from one stream, so the
first 64 of 1,000 samples are the 64 samples of a smaller request with the same seed and purpose, and
:func:`latent_noise_batches` can hand out a million rows a few at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Each purpose has its own stream: the grid's noise never repeats a training step's.
PURPOSES = {"step": 1, "grid": 2, "samples": 3, "verify": 4}
GRID_SIZE = 64  # the chapter's fixed grid: 64 noise vectors, shown 8x8
GRID_COLUMNS = 8  # images a row in every grid: the chapter's 8x8, or a conditional generator's 8 of each class
LABELS = 5  # the stream of the training steps' fake-image labels (not a latent-noise purpose)
LABEL_OFFSETS = 6  # the stream of the offsets to the wrong classes of the real images (matching-aware loss)
# The largest seed a run can have (torch.manual_seed takes 64-bit seeds; gan.config bounds --seed the same way).
# Every command accepts the same range, so any run's seed can be passed to generation and evaluation.
MAX_SEED = 2**63 - 1


def seed_problem(seed: int, flag: str = "--seed") -> str | None:
    """The problem sentence for a seed outside 0..:data:`MAX_SEED`, or None."""
    if not 0 <= seed <= MAX_SEED:
        return f"{flag} must be between 0 and 2**63 - 1, got {seed}"
    return None


def latent_noise(seed: int, purpose: str, count: int, latent_dim: int, index: int = 0) -> np.ndarray:
    """Standard normal noise float32 [count, latent_dim] for ``purpose`` (a key of :data:`PURPOSES`).

    ``index`` separates the draws of one purpose (the training step, for ``"step"``). ``seed`` and ``index``
    must be non-negative integers.
    """
    return _stream(seed, purpose, count, index).standard_normal((int(count), latent_dim), np.float32)


def latent_noise_batches(
    seed: int, purpose: str, count: int, latent_dim: int, batch_size: int, index: int = 0
) -> Iterator[np.ndarray]:
    """:func:`latent_noise` bit for bit, as consecutive pieces of at most ``batch_size`` rows.

    Each piece continues the one stream of (seed, purpose, index): a row's values depend on every row before it,
    so this is how row 999,000 is reached while memory holds one piece, never all ``count`` rows.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"the noise batch size must be a positive integer, got {batch_size!r}")
    stream = _stream(seed, purpose, count, index)  # checks the arguments now, not at the first batch
    return (
        stream.standard_normal((min(batch_size, count - start), latent_dim), np.float32)
        for start in range(0, int(count), batch_size)
    )


def _stream(seed: int, purpose: str, count: int, index: int) -> np.random.Generator:
    """The random generator of (seed, purpose, index), once the arguments are checked."""
    if purpose not in PURPOSES:
        raise ValueError(f"noise purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    for name, value in (("seed", seed), ("index", index)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"the noise {name} must be a non-negative integer, got {value!r}")
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"the number of noise vectors must be a positive integer, got {count!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), PURPOSES[purpose], int(index)])))


def sample_labels(count: int, num_classes: int) -> np.ndarray:
    """Class labels int64 [count] for a conditional generator's samples: 0, 1, ..., num_classes - 1, 0, 1, ...

    Balanced and in a fixed order, so that every class is present (from ``num_classes`` samples on) and the n-th
    sample of a seed has the same noise and the same class in the run, ``gan.generate`` and ``gan.evaluate``.
    """
    return np.arange(count, dtype=np.int64) % num_classes


def step_labels(seed: int, step: int, global_batch_size: int, num_classes: int, process_index: int = 0,
                num_processes: int = 1) -> np.ndarray:
    """This process's share of step ``step``'s fake-image labels, int64, uniform over the classes.

    Drawn like :func:`step_noise` for the whole global batch from (seed, step), in a stream of their own, so any
    number of processes sees the same labels.
    """
    return _step_integers(seed, LABELS, step, 0, num_classes, global_batch_size, process_index, num_processes)


def step_label_offsets(seed: int, step: int, global_batch_size: int, num_classes: int, process_index: int = 0,
                       num_processes: int = 1) -> np.ndarray:
    """This process's share of step ``step``'s label offsets, int64, uniform over 1..num_classes - 1: a real image
    of class c is shown to the matching-aware discriminator with the wrong class (c + offset) % num_classes.

    Drawn for the whole global batch from (seed, step) in a stream of their own, and sharded like the images.
    """
    return _step_integers(seed, LABEL_OFFSETS, step, 1, num_classes, global_batch_size, process_index,
                          num_processes)


def _step_integers(seed: int, stream: int, step: int, low: int, high: int, global_batch_size: int,
                   process_index: int, num_processes: int) -> np.ndarray:
    """This process's contiguous share of (seed, stream, step)'s global batch of integers in [low, high)."""
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream, int(step)])))
    values = generator.integers(low, high, size=global_batch_size, dtype=np.int64)
    local = global_batch_size // num_processes
    return values[process_index * local : (process_index + 1) * local]


def grid_inputs(seed: int, purpose: str, latent_dim: int, num_classes: int = 0
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The noise of a picture grid (the fixed grid: ``"grid"``; the final samples: ``"samples"``) and, for a
    conditional generator, its labels int64.

    Unconditional: :data:`GRID_SIZE` vectors, no labels. Conditional: the first :data:`GRID_COLUMNS` samples of
    each class in :func:`sample_labels` order, arranged in rows: row ``c`` holds samples ``c, C + c, 2C + c, ...``,
    so that the picture shows exactly the images ``gan.generate`` and ``gan.evaluate`` draw for the same seed.
    """
    if not num_classes:
        return latent_noise(seed, purpose, GRID_SIZE, latent_dim), None
    count = GRID_COLUMNS * num_classes
    order = np.arange(count).reshape(GRID_COLUMNS, num_classes).T.reshape(-1)
    return latent_noise(seed, purpose, count, latent_dim)[order], sample_labels(count, num_classes)[order]


def step_noise(seed: int, step: int, global_batch_size: int, latent_dim: int, process_index: int = 0,
               num_processes: int = 1) -> np.ndarray:
    """This process's contiguous share of step ``step``'s global noise batch.

    The whole global batch depends only on (seed, step), so a run sees the same noise whatever the number of
    processes; each process takes its slice in the same order as the data shards.
    """
    local = global_batch_size // num_processes
    noise = latent_noise(seed, "step", global_batch_size, latent_dim, index=step)
    return noise[process_index * local : (process_index + 1) * local]


def step_noise_tensor(seed: int, step: int, global_batch_size: int, latent_dim: int, device, dtype,
                      process_index: int = 0, num_processes: int = 1):
    """This process's share of step ``step``'s noise as a torch tensor on the training ``device``.

    On the CPU it is :func:`step_noise`. On an accelerator it is drawn there by a torch generator seeded from
    (seed, step): a copy from host memory would make the host wait for the device every step. Either way the
    whole global batch depends only on (seed, step), so any number of processes sees the same batch, and a
    resumed run the same noise. (torch is imported here only: the rest of this module serves numpy-only code.)
    """
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        local = step_noise(seed, step, global_batch_size, latent_dim, process_index, num_processes)
        return torch.from_numpy(local).to(dtype)
    generator = _device_generator(device, seed, PURPOSES["step"], step)
    whole = torch.randn((global_batch_size, latent_dim), generator=generator, device=device, dtype=torch.float32)
    local = global_batch_size // num_processes
    return whole[process_index * local : (process_index + 1) * local].to(dtype)


def step_labels_tensor(seed: int, step: int, global_batch_size: int, num_classes: int, device,
                       process_index: int = 0, num_processes: int = 1):
    """This process's share of step ``step``'s fake-image labels as an int64 torch tensor on the training ``device``.

    :func:`step_labels` on the CPU; on an accelerator drawn there from (seed, step), like :func:`step_noise_tensor`,
    so that the host never waits for the device. Either way the whole global batch depends only on (seed, step).
    """
    return _step_integers_tensor(seed, LABELS, step, 0, num_classes, global_batch_size, device, process_index,
                                 num_processes)


def wrong_labels_tensor(seed: int, step: int, labels, global_batch_size: int, num_classes: int, device,
                        process_index: int = 0, num_processes: int = 1):
    """For this process's real labels int64 [B] of step ``step``, a wrong class for each, int64 [B] on ``device``:
    (label + offset) % num_classes with the offsets of :func:`step_label_offsets` (drawn on an accelerator like
    :func:`step_labels_tensor`), so any number of processes pairs each image with the same wrong class."""
    offsets = _step_integers_tensor(seed, LABEL_OFFSETS, step, 1, num_classes, global_batch_size, device,
                                    process_index, num_processes)
    return (labels + offsets.to(labels.device)) % num_classes


def _step_integers_tensor(seed: int, stream: int, step: int, low: int, high: int, global_batch_size: int, device,
                          process_index: int, num_processes: int):
    """:func:`_step_integers` as an int64 torch tensor: drawn with numpy on the CPU, on an accelerator by its own
    generator seeded from (seed, stream, step). (torch is imported here only: see :func:`step_noise_tensor`.)"""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(_step_integers(seed, stream, step, low, high, global_batch_size, process_index,
                                               num_processes))
    generator = _device_generator(device, seed, stream, step)
    whole = torch.randint(low, high, (global_batch_size,), generator=generator, device=device)
    local = global_batch_size // num_processes
    return whole[process_index * local : (process_index + 1) * local]


def _device_generator(device, seed: int, stream: int, step: int):
    """The torch generator of ``device``, reseeded for (seed, stream, step): one per device, made on first use."""
    import torch

    generator = _device_generators.get(device)
    if generator is None:
        generator = _device_generators[device] = torch.Generator(device=device)
    state = np.random.SeedSequence([int(seed), stream, int(step)]).generate_state(1, np.uint64)[0]
    generator.manual_seed(int(state) & MAX_SEED)
    return generator


_device_generators: dict = {}  # one reseeded generator per device
