"""gan/samplers.py: the noise ``generate`` feeds a sampler, and PyTorch and ONNX generators giving the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CONDITIONAL_RUN_CONFIG, SMALL_LATENT_DIM, save_small_run

from gan.artifacts import ArtifactError, load_generator, read_config
from gan.data import to_uint8
from gan.export import MODEL_FILE, export_onnx, model_metadata
from gan.noise import latent_noise, sample_labels
from gan.samplers import OpenedGenerator, generate, generation_labels, onnx_sampler, open_generator, torch_sampler


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
        opened = open_generator(source)
        assert opened.latent_dim == SMALL_LATENT_DIM
        images[opened.kind] = generate(opened.sampler, opened.latent_dim, 300, seed=5, batch_size=128)
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


# --- class-conditional generators: labels in the order of gan.noise.sample_labels, PyTorch and ONNX alike ---------


def labels_as_images(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A conditional sampler that shows which labels it was asked for: [B, 1, 1, 1]."""
    return labels.float()[:, None, None, None]


def test_generate_asks_a_conditional_sampler_for_the_classes_in_turn():
    images = generate(labels_as_images, 8, 25, seed=0, batch_size=10, num_classes=10)  # batches of 10, 10, 5
    expected = torch.from_numpy(sample_labels(25, 10))
    assert torch.equal(images.flatten().long(), expected) and torch.equal(generation_labels(25, 10), expected)
    assert generation_labels(25, 0) is None
    opened = OpenedGenerator(labels_as_images, 8, "pytorch", num_classes=10)
    opened_images, labels = opened.generate(25, seed=0, batch_size=10)
    assert torch.equal(opened_images, images) and torch.equal(labels, expected)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A run folder of a small 10-class generator and, in it, the same generator exported to ONNX."""
    run_dir = tmp_path_factory.mktemp("conditional-run")
    generator = save_small_run(run_dir, **CONDITIONAL_RUN_CONFIG)
    export_onnx(generator, run_dir / MODEL_FILE, model_metadata(read_config(run_dir), "fp32"))
    return run_dir, run_dir / MODEL_FILE


def test_conditional_run_folder_and_onnx_model_give_the_same_images(conditional_run):
    opened = {source: open_generator(source) for source in conditional_run}
    assert [(g.kind, g.num_classes) for g in opened.values()] == [("pytorch", 10), ("onnx", 10)]
    samples = {g.kind: g.generate(300, seed=5, batch_size=128) for g in opened.values()}
    images, labels = samples["pytorch"]
    torch.testing.assert_close(samples["onnx"][0], images, atol=1e-4, rtol=0)
    assert torch.equal(samples["onnx"][1], labels) and torch.equal(labels, generation_labels(300, 10))
    # The label matters: the same noise asked for another class gives other images.
    sampler = opened[conditional_run[0]].sampler
    z, zeros = torch.from_numpy(latent_noise(5, "samples", 10, SMALL_LATENT_DIM)), torch.zeros(10, dtype=torch.long)
    assert (sampler(z, zeros) - sampler(z, zeros + 1)).abs().max() > 0.01


def test_an_unconditional_source_has_no_classes(small_run):
    assert [open_generator(source).num_classes for source in small_run] == [0, 0]
