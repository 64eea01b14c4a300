"""gan/samplers.py: the noise ``generate`` feeds a sampler, and PyTorch and ONNX generators giving the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SMALL_LATENT_DIM, save_small_run

from gan.artifacts import ArtifactError, load_generator
from gan.data import to_uint8
from gan.export import export_onnx
from gan.noise import latent_noise
from gan.samplers import generate, onnx_sampler, open_generator, torch_sampler


def noise_as_images(z: torch.Tensor) -> torch.Tensor:
    """A sampler that shows what it was given: z [B, D] -> [B, 1, D, 1]."""
    return z[:, None, :, None]


def test_generate_feeds_the_sample_noise_of_the_seed():
    images = generate(noise_as_images, 8, 50, seed=7, batch_size=16)  # batches of 16, 16, 16, 2
    expected = torch.from_numpy(latent_noise(7, "samples", 50, 8))
    assert torch.equal(images[:, 0, :, 0], expected)
    # The batch size does not change the noise, and the first samples are those of a smaller request.
    assert torch.equal(generate(noise_as_images, 8, 50, seed=7, batch_size=1000), images)
    assert torch.equal(generate(noise_as_images, 8, 10, seed=7), images[:10])
    assert not torch.equal(generate(noise_as_images, 8, 50, seed=8), images)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run folder of a small generator and the same generator exported to ONNX."""
    run_dir = tmp_path_factory.mktemp("run")
    generator = save_small_run(run_dir)
    onnx_path = run_dir.parent / "generator.onnx"  # no config.json beside it
    export_onnx(generator, onnx_path, {"latent_dim": str(SMALL_LATENT_DIM)})
    return run_dir, onnx_path


def test_run_folder_and_onnx_model_give_the_same_images(small_run):
    images = {}
    for source in small_run:
        sampler, latent_dim, kind = open_generator(source)
        assert latent_dim == SMALL_LATENT_DIM
        images[kind] = generate(sampler, latent_dim, 300, seed=5, batch_size=128)
    assert images["pytorch"].shape == (300, 1, 28, 28) and images["pytorch"].std() > 0.1  # varied, not flat grey
    torch.testing.assert_close(images["onnx"], images["pytorch"], atol=1e-4, rtol=0)


def test_unusable_sources_are_artifact_errors(tmp_path):
    with pytest.raises(ArtifactError, match="missing.onnx does not exist"):
        open_generator(tmp_path / "missing.onnx")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ArtifactError, match="neither a training run folder nor an .onnx file"):
        open_generator(tmp_path / "weights.bin")
    (tmp_path / "garbage.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="garbage.onnx"):
        onnx_sampler(tmp_path / "garbage.onnx")


@pytest.mark.slow  # the `run` fixture trains with train_ddp.py and exports with export.py
@pytest.mark.parametrize("seed", [0, 11])
def test_generate_equals_the_onnx_generator_of_the_same_seed(run, onnx_generator, seed):
    """The run's PyTorch generator through gan.samplers and its exported model through gan.onnx_generator."""
    num_images = 70
    generator, config = load_generator(run.run_dir)
    images = generate(torch_sampler(generator), config["latent_dim"], num_images, seed=seed, batch_size=32)
    onnx_images = onnx_generator.generate_raw(onnx_generator.noise(num_images, seed))
    np.testing.assert_allclose(images.numpy(), onnx_images, atol=1e-5, rtol=0)
    pixels = to_uint8(images)[:, 0].numpy().astype(int)  # [N, 28, 28]
    onnx_pixels = onnx_generator.generate(num_images, seed=seed).astype(int)
    assert np.abs(pixels - onnx_pixels).max() <= 1  # rounding of values a hair apart may differ by one level
    assert images.std() > 0.02  # the comparison is not between flat images (fresh weights: ~0.003)
