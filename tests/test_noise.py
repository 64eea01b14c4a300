"""gan/noise.py: one source of noise, so one seed gives the same images in every place and backend."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import ExportedRun, run_command

from gan.artifacts import load_generator, read_config
from gan.data import to_uint8
from gan.noise import MAX_SEED, latent_noise, latent_noise_batches, seed_problem, step_noise
from gan.onnx_generator import OnnxGenerator
from gan.pictures import SAMPLES_FINAL, save_samples_final
from gan.samplers import generate, torch_sampler


def test_noise_is_standard_normal_and_depends_on_seed_purpose_and_index():
    noise = latent_noise(3, "samples", 2000, 100)
    assert noise.dtype == np.float32 and noise.shape == (2000, 100)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    assert np.array_equal(noise, latent_noise(3, "samples", 2000, 100))
    others = [latent_noise(4, "samples", 2000, 100), latent_noise(3, "grid", 2000, 100),
              latent_noise(3, "samples", 2000, 100, index=1)]
    for other in others:
        assert np.corrcoef(noise.ravel(), other.ravel())[0, 1] < 0.01  # independent streams, not shifted copies


def test_a_smaller_request_is_a_prefix_of_a_larger_one():
    assert np.array_equal(latent_noise(0, "samples", 64, 100), latent_noise(0, "samples", 1000, 100)[:64])


def test_step_noise_shards_one_global_batch():
    whole = step_noise(5, 17, 128, 100)
    shards = [step_noise(5, 17, 128, 100, rank, 4) for rank in range(4)]
    assert np.array_equal(np.concatenate(shards), whole)
    assert np.array_equal(whole, latent_noise(5, "step", 128, 100, index=17))


@pytest.mark.parametrize(("arguments", "message"), [
    ((-1, "samples", 4, 100), "seed"), ((0, "nope", 4, 100), "purpose"), ((0, "samples", 0, 100), "number"),
    ((0, "step", 4, 100, -2), "index"),
])
def test_bad_requests_say_what_is_wrong(arguments, message):
    with pytest.raises(ValueError, match=message):
        latent_noise(*arguments)


def test_batches_are_the_noise_of_one_request_bit_for_bit():
    whole = latent_noise(3, "samples", 2345, 100)
    for batch_size in (1, 7, 1000, 5000):
        batches = list(latent_noise_batches(3, "samples", 2345, 100, batch_size))
        assert max(len(batch) for batch in batches) == min(batch_size, 2345)
        assert np.array_equal(np.concatenate(batches), whole)
    with pytest.raises(ValueError, match="seed"):
        latent_noise_batches(-1, "samples", 4, 100, 2)  # checked at the call, not at the first batch
    with pytest.raises(ValueError, match="batch size"):
        latent_noise_batches(0, "samples", 4, 100, 0)


def test_every_command_accepts_the_same_seeds():
    assert seed_problem(0) is None and seed_problem(MAX_SEED) is None
    for seed in (-1, MAX_SEED + 1):
        assert seed_problem(seed) == f"--seed must be between 0 and 2**63 - 1, got {seed}"


def _rendered(images: np.ndarray, which: str, path: Path) -> np.ndarray:
    save_samples_final(path, images, which)
    return matplotlib.image.imread(path)


def test_one_seed_gives_the_same_images_in_the_run_in_generate_and_in_evaluation(run: ExportedRun, tmp_path: Path):
    """samples_final.png (drawn by train_ddp.py), the PyTorch sampler of gan.evaluate, the ONNX model and
    `python -m gan.generate` all turn the run's seed into the same 64 characters."""
    config = read_config(run.run_dir)
    seed, which = config["seed"], config["generator_weights"]
    generator, _ = load_generator(run.run_dir)
    from_pytorch = to_uint8(generate(torch_sampler(generator), config["latent_dim"], 64, seed=seed))[:, 0].numpy()
    from_onnx = OnnxGenerator(run.model).generate(64, seed=seed)
    npy = tmp_path / "cli.npy"
    run_command([sys.executable, "-m", "gan.generate", str(run.model), "--n", "100", "--seed", str(seed),
                 "--out", str(tmp_path / "cli.png"), "--npy", str(npy)], timeout=60)
    from_cli = np.load(npy)[:64]
    assert np.abs(from_pytorch.astype(int) - from_onnx.astype(int)).max() <= 1  # float32 rounding, at most 1 level
    assert np.array_equal(from_cli, from_onnx)

    in_run = matplotlib.image.imread(run.run_dir / SAMPLES_FINAL)
    for images in (from_pytorch, from_onnx):
        assert np.abs(_rendered(images, which, tmp_path / "again.png") - in_run).max() <= 1.5 / 255
    other_seed = OnnxGenerator(run.model).generate(64, seed=seed + 1)
    assert np.abs(_rendered(other_seed, which, tmp_path / "other.png") - in_run).mean() > 5 / 255  # a real check
