"""Class-conditional training (--num-classes): labels drawn and sharded like the noise and the images, the
labelled step with its class loss (AC-GAN), conditional BatchNorm, EMA, pictures, and real runs that train the same
model on 1 and 2 processes and resume exactly."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import subprocess
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from helpers import ROOT, run_command, train_command
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from wandb_reader import config_values, history_rows, read_records

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, load_generator, plain_state_dict, save_final_generators
from gan.checkpointing import CHECKPOINTS, RESUME_CHANGEABLE, STATE_TENSORS, ResumePlan, resumed_config
from gan.config import (
    CLASS_LOSS_WEIGHT,
    LR_DISCRIMINATOR,
    LR_DISCRIMINATOR_CONDITIONAL,
    LR_GENERATOR,
    LR_GENERATOR_CONDITIONAL,
    MISMATCH_LOSS_WEIGHT,
    SetupError,
    parse_config,
)
from gan.data import (
    CLASS_CHARACTERS,
    CLASS_NAMES,
    KMNISTData,
    ShardedBatches,
    class_exemplars,
    first_classes,
    load_kmnist,
    to_signed_unit,
)
from gan.ema import GeneratorEMA
from gan.models import LATENT_DIM, Discriminator, Generator
from gan.noise import (
    GRID_COLUMNS,
    GRID_SIZE,
    grid_inputs,
    latent_noise,
    sample_labels,
    step_label_offsets,
    step_labels,
    step_labels_tensor,
    wrong_labels_tensor,
)
from gan.pictures import DIVIDER, METRICS_CSV, SAMPLES_FINAL, SAMPLES_OVER_TIME, ClassRows, grid_image, tile
from gan.step import GAN, train_step

CLASSES = 10
CHARACTERS = list(CLASS_CHARACTERS)

# ---------------------------------------------------------------- labels: drawn, sharded, gridded


def test_step_labels_shard_one_global_batch_and_depend_on_seed_and_step():
    whole = step_labels(5, 17, 128, CLASSES)
    assert whole.dtype == np.int64 and whole.shape == (128,)
    assert np.array_equal(np.concatenate([step_labels(5, 17, 128, CLASSES, rank, 4) for rank in range(4)]), whole)
    assert np.array_equal(whole, step_labels(5, 17, 128, CLASSES))  # a resumed run draws them again
    assert not np.array_equal(whole, step_labels(5, 18, 128, CLASSES))
    assert not np.array_equal(whole, step_labels(6, 17, 128, CLASSES))
    counts = np.bincount(step_labels(0, 0, 10_000, CLASSES), minlength=CLASSES)
    assert counts.min() > 900 and counts.max() < 1100  # uniform over the classes
    assert step_labels(0, 0, 1000, 3).max() == 2  # only the run's classes
    on_cpu = step_labels_tensor(5, 17, 128, CLASSES, "cpu", 1, 2)
    assert on_cpu.dtype == torch.int64 and np.array_equal(on_cpu.numpy(), step_labels(5, 17, 128, CLASSES, 1, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_labels_on_the_gpu_depend_on_seed_and_step_only():
    def draw(seed, step, rank=0, processes=1):
        return step_labels_tensor(seed, step, 128, CLASSES, "cuda", rank, processes)

    whole = draw(5, 17)
    assert whole.device.type == "cuda" and whole.dtype == torch.int64 and 0 <= whole.min() <= whole.max() < CLASSES
    torch.randn(7, device="cuda")  # the global generator moving on changes nothing
    assert torch.equal(torch.cat([draw(5, 17, rank, 2) for rank in range(2)]), whole)
    assert not torch.equal(draw(5, 18), whole)


def test_wrong_labels_are_never_the_real_ones_and_shard_one_global_draw():
    real = torch.from_numpy(step_labels(3, 4, 10_000, CLASSES))  # any labels will do
    wrong = wrong_labels_tensor(5, 17, real, 10_000, CLASSES, "cpu")
    assert wrong.dtype == torch.int64 and not (wrong == real).any()
    assert wrong.min() >= 0 and wrong.max() < CLASSES
    offsets = np.bincount(((wrong - real) % CLASSES).numpy(), minlength=CLASSES)
    assert offsets[0] == 0 and offsets[1:].min() > 0.8 * 10_000 / (CLASSES - 1)  # uniform over the wrong ones
    shards = [wrong_labels_tensor(5, 17, real[rank * 2500 : (rank + 1) * 2500], 10_000, CLASSES, "cpu", rank, 4)
              for rank in range(4)]
    assert torch.equal(torch.cat(shards), wrong)  # any number of processes pairs each image with the same class
    assert torch.equal(wrong, wrong_labels_tensor(5, 17, real, 10_000, CLASSES, "cpu"))  # a resumed run: again
    assert not torch.equal(wrong, wrong_labels_tensor(5, 18, real, 10_000, CLASSES, "cpu"))
    assert not torch.equal(wrong, wrong_labels_tensor(6, 17, real, 10_000, CLASSES, "cpu"))
    assert np.array_equal(step_label_offsets(5, 17, 10_000, CLASSES), ((wrong - real) % CLASSES).numpy())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_wrong_labels_on_the_gpu_depend_on_seed_and_step_only():
    real = torch.arange(128, device="cuda") % CLASSES

    def draw(seed, step, rank=0, processes=1):
        share = slice(rank * 128 // processes, (rank + 1) * 128 // processes)
        return wrong_labels_tensor(seed, step, real[share], 128, CLASSES, "cuda", rank, processes)

    whole = draw(5, 17)
    assert whole.device.type == "cuda" and whole.dtype == torch.int64 and not (whole == real).any()
    torch.randn(7, device="cuda")  # the global generator moving on changes nothing
    assert torch.equal(torch.cat([draw(5, 17, rank, 2) for rank in range(2)]), whole)
    assert torch.equal(draw(5, 17), whole) and not torch.equal(draw(5, 18), whole)


def test_a_conditional_grid_is_one_row_of_eight_per_class():
    noise, labels = grid_inputs(3, "grid", 16, CLASSES)
    assert np.array_equal(labels, np.repeat(np.arange(CLASSES), GRID_COLUMNS))
    # row c, column j is sample j * CLASSES + c of the seed: the image gan.generate and gan.evaluate draw there
    samples, sample_classes = latent_noise(3, "grid", GRID_COLUMNS * CLASSES, 16), sample_labels(80, CLASSES)
    for c in range(CLASSES):
        for j in range(GRID_COLUMNS):
            index = j * CLASSES + c
            assert np.array_equal(noise[c * GRID_COLUMNS + j], samples[index]) and sample_classes[index] == c
    noise, labels = grid_inputs(3, "samples", 16)  # the chapter's grid: 64 vectors, no labels
    assert labels is None and np.array_equal(noise, latent_noise(3, "samples", GRID_SIZE, 16))


def _labelled_data(count: int = 1000) -> KMNISTData:
    """Image i is filled with the value i % 256 and has label i % 10 (after the first, which is class 3)."""
    images = (torch.arange(count) % 256).to(torch.uint8)[:, None, None].expand(count, 28, 28).contiguous()
    labels = torch.arange(count) % CLASSES
    labels[0] = 3
    return KMNISTData(images, labels, "test")


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_labels_are_sharded_exactly_like_their_images(num_processes):
    data = _labelled_data()
    ids = torch.arange(len(data))  # an image's index, carried as its "label", shows which image each shard got
    for rank in range(num_processes):
        batches = ShardedBatches(data.images, 64, 7, rank, num_processes, labels=ids)
        for batch, (images, labels) in enumerate(batches.labelled_epoch(2)):
            assert torch.equal(labels, batches.local_indices(2, batch))
            assert torch.equal(images, to_signed_unit(data.images[labels]).unsqueeze(1))  # each with its own label
            assert torch.equal(images, next(batches.epoch(2, batch)))  # the images alone, as before
    with pytest.raises(ValueError, match="labels"):
        ShardedBatches(data.images, 64, 7, labels=ids[:-1])
    plain = ShardedBatches(data.images, 64, 7)
    assert next(plain.labelled_epoch(0))[1] is None


def test_fewer_classes_keep_their_images_and_each_class_has_an_exemplar():
    data = _labelled_data()
    assert first_classes(data, 0) is data and first_classes(data, CLASSES) is data
    three = first_classes(data, 3)
    assert len(three) == 299 and set(three.labels.tolist()) == {0, 1, 2}  # 3 x 100, less image 0 (class 3)
    assert torch.equal(three.images, data.images[data.labels < 3])
    firsts = [10, 1, 2, 0, 4, 5, 6, 7, 8, 9]  # image 0 is the first of class 3, so class 0's is image 10
    assert torch.equal(class_exemplars(data, CLASSES), data.images[firsts])


@pytest.mark.parametrize(("argv", "expected"), [
    (["--num-classes", "1"], "--num-classes must be 0 (unconditional) or 2..10"),
    (["--num-classes", "11"], "--num-classes must be 0 (unconditional) or 2..10"),
    (["--num-classes", "-1"], "--num-classes must be 0 (unconditional) or 2..10"),
    (["--split", "test", "--num-classes", "2", "--batch-size", "3000"],
     "--batch-size 3000 is larger than the test split of its first 2 classes (2000 images)"),
])
def test_bad_class_counts_are_refused_at_parse_time(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_the_class_count_defines_the_run():
    assert parse_config([]).num_classes == 0  # the chapter's model by default
    assert parse_config(["--num-classes", "10"]).num_classes == 10
    assert "num_classes" not in RESUME_CHANGEABLE


def test_the_class_loss_weight_and_class_norm_default_by_model_and_define_the_run():
    assert parse_config([]).class_loss_weight == 0 and parse_config([]).class_norm is False  # the chapter's model
    assert parse_config(["--num-classes", "10"]).class_loss_weight == CLASS_LOSS_WEIGHT
    assert parse_config(["--num-classes", "10"]).class_norm is True
    assert parse_config(["--num-classes", "10", "--no-class-norm"]).class_norm is False
    assert "class_norm" not in RESUME_CHANGEABLE
    assert parse_config(["--num-classes", "10", "--class-loss-weight", "0"]).class_loss_weight == 0
    assert parse_config(["--num-classes", "0", "--class-loss-weight", "0"]).class_loss_weight == 0
    assert parse_config(["--num-classes", "10", "--class-loss-weight", "2.5"]).to_dict()["class_loss_weight"] == 2.5
    assert "class_loss_weight" not in RESUME_CHANGEABLE


def test_the_mismatch_loss_weight_and_the_rates_default_by_model_and_define_the_run():
    chapter, conditional = parse_config([]), parse_config(["--num-classes", "10"])
    assert chapter.mismatch_loss_weight == 0  # the chapter's model: its rates and no mismatch term
    assert (chapter.lr_generator, chapter.lr_discriminator) == (LR_GENERATOR, LR_DISCRIMINATOR)
    assert conditional.mismatch_loss_weight == MISMATCH_LOSS_WEIGHT
    assert (conditional.lr_generator, conditional.lr_discriminator) == (LR_GENERATOR_CONDITIONAL,
                                                                      LR_DISCRIMINATOR_CONDITIONAL)
    given = parse_config(["--num-classes", "10", "--mismatch-loss-weight", "0", "--lr-discriminator", "1e-4"])
    assert (given.mismatch_loss_weight, given.lr_generator, given.lr_discriminator) == (0, LR_GENERATOR_CONDITIONAL,
                                                                                      1e-4)
    assert (parse_config(["--num-classes", "10", "--lr", "1e-3"]).lr_generator,
            parse_config(["--num-classes", "10", "--lr", "1e-3"]).lr_discriminator) == (1e-3, 1e-3)  # --lr: both
    assert parse_config(["--num-classes", "10", "--mismatch-loss-weight", "2"]).to_dict()["mismatch_loss_weight"] == 2
    assert not {"mismatch_loss_weight", "lr_generator", "lr_discriminator"} & set(RESUME_CHANGEABLE)


def test_an_older_conditional_run_resumes_without_the_parts_it_did_not_record(tmp_path):
    """Runs from before --class-loss-weight, --class-norm and --mismatch-loss-weight recorded none of them: they
    trained without all three. Their learning rates were recorded, so they keep them."""
    settings = parse_config(["--num-classes", "10", "--class-loss-weight", "0", "--no-class-norm",
                             "--lr-generator", "2e-3", "--lr-discriminator", "4e-4"]).to_dict()
    del settings["class_loss_weight"], settings["class_norm"], settings["mismatch_loss_weight"]
    plan = ResumePlan(tmp_path / "old", tmp_path / "old", settings=settings)
    resumed = resumed_config(parse_config(["--num-classes", "10", "--resume", "latest"]), plan)
    assert (resumed.num_classes, resumed.class_loss_weight, resumed.class_norm, resumed.mismatch_loss_weight,
            resumed.lr_generator, resumed.lr_discriminator) == (10, 0.0, False, 0.0, 2e-3, 4e-4)
    with pytest.raises(SetupError, match="--class-loss-weight 1.0: the run"):
        resumed_config(parse_config(["--num-classes", "10", "--class-loss-weight", "1", "--resume", "latest"]), plan)
    with pytest.raises(SetupError, match="--mismatch-loss-weight 1.0: the run"):
        resumed_config(parse_config(["--num-classes", "10", "--mismatch-loss-weight", "1", "--resume", "latest"]),
                       plan)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--mismatch-loss-weight", "1"], "--mismatch-loss-weight 1.0 needs a class-conditional run (--num-classes N)"),
    (["--num-classes", "10", "--mismatch-loss-weight", "-1"], "--mismatch-loss-weight must be 0 or positive, got -1.0"),
    (["--num-classes", "10", "--mismatch-loss-weight", "nan"], "--mismatch-loss-weight must be 0 or positive, got nan"),
    (["--num-classes", "10", "--mismatch-loss-weight", "inf"], "--mismatch-loss-weight must be finite, got inf"),
    (["--class-norm"], "--class-norm needs a class-conditional run (--num-classes N)"),
    (["--class-loss-weight", "1"], "--class-loss-weight 1.0 needs a class-conditional run (--num-classes N)"),
    (["--num-classes", "10", "--class-loss-weight", "-1"], "--class-loss-weight must be 0 or positive, got -1.0"),
    (["--num-classes", "10", "--class-loss-weight", "nan"], "--class-loss-weight must be 0 or positive, got nan"),
    (["--num-classes", "10", "--class-loss-weight", "inf"], "--class-loss-weight must be finite, got inf"),
])
def test_bad_conditional_settings_are_refused_at_parse_time(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


# ---------------------------------------------------------------- the labelled step, EMA, pictures


def _sgd(module: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(module.parameters(), lr=0.05)  # linear in the gradients: see tests/test_step.py


def _reference_step(generator, discriminator, opt_g, opt_d, real, real_classes, noise, fake_classes,
                    class_loss_weight=0.0, wrong_classes=None, mismatch_loss_weight=0.0):
    """The chapter's step written out literally, each network given the images' classes; with a class loss weight,
    AC-GAN's class terms on the real images (D) and on the fakes (G) added; with a mismatch loss weight, D's verdict
    on the real images shown with their wrong classes, labelled fake, added to the D step."""
    ones, zeros = torch.ones(len(real), dtype=real.dtype), torch.zeros(len(real), dtype=real.dtype)

    def judged(images, classes, target):  # BCE towards target, plus the class term when there is one
        if not class_loss_weight:
            return F.binary_cross_entropy_with_logits(discriminator(images, classes), target)
        logits, class_logits = discriminator(images, classes, classify=True)
        return (F.binary_cross_entropy_with_logits(logits, target)
                + class_loss_weight * F.cross_entropy(class_logits, classes))

    discriminator.zero_grad()
    judged(real, real_classes, ones).backward()
    if mismatch_loss_weight:
        # a second look at the same batch: the same BatchNorm statistics, but not a second batch for the running ones
        running = {name: value.clone() for name, value in discriminator.named_buffers()}
        wrong = F.binary_cross_entropy_with_logits(discriminator(real, wrong_classes), zeros)
        (mismatch_loss_weight * wrong).backward()
        discriminator.load_state_dict({**discriminator.state_dict(), **running})
    fake = generator(noise, fake_classes)
    F.binary_cross_entropy_with_logits(discriminator(fake.detach(), fake_classes), zeros).backward()
    opt_d.step()
    generator.zero_grad()
    judged(fake, fake_classes, ones).backward()
    opt_g.step()


@pytest.mark.parametrize("class_loss_weight, mismatch_loss_weight", [(0.0, 0.0), (1.5, 0.0), (0.0, 0.7), (1.5, 0.7)])
def test_labelled_train_step_matches_the_chapter_step_with_classes(class_loss_weight, mismatch_loss_weight):
    """Small networks in float64 (a full-size float64 step takes seconds on 2 cores); the same code at any size."""
    latent_dim, width, batch = 16, 8, 16

    def networks():
        torch.manual_seed(0)
        discriminator = Discriminator(width, CLASSES, class_head=class_loss_weight > 0)
        return (Generator(latent_dim, width, CLASSES).double(), discriminator.double())

    generator, discriminator = networks()
    reference = copy.deepcopy(generator), copy.deepcopy(discriminator)
    gan = GAN(generator, discriminator, _sgd(generator), _sgd(discriminator))
    ref_opts = _sgd(reference[0]), _sgd(reference[1])
    accelerator = Accelerator(cpu=True)
    for step in range(3):
        real = torch.rand(batch, 1, 28, 28, dtype=torch.float64) * 2 - 1
        real_classes = torch.randint(0, CLASSES, (batch,))
        noise = torch.randn(batch, latent_dim, dtype=torch.float64)
        fake_classes = step_labels_tensor(0, step, batch, CLASSES, "cpu")
        wrong_classes = wrong_labels_tensor(0, step, real_classes, batch, CLASSES, "cpu")
        metrics = train_step(accelerator, gan, real, noise, 1.0, real_classes, fake_classes, class_loss_weight,
                             wrong_classes if mismatch_loss_weight else None, mismatch_loss_weight)
        _reference_step(*reference, *ref_opts, real, real_classes, noise, fake_classes, class_loss_weight,
                        wrong_classes, mismatch_loss_weight)
        assert torch.isfinite(metrics).all()
    for ours, theirs in zip((generator, discriminator), reference, strict=True):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-12), name
    # the classes are learned: both embeddings moved away from their initial values
    initial_g, initial_d = networks()
    assert not torch.equal(generator.label_embedding.weight, initial_g.label_embedding.weight)
    assert not torch.equal(discriminator.projection.weight, initial_d.projection.weight)


def test_the_mismatch_term_is_in_d_loss_and_teaches_d_to_reject_wrong_classes():
    real, noise, real_classes, fake_classes = _step_inputs()
    wrong_classes = wrong_labels_tensor(0, 0, real_classes, 32, CLASSES, "cpu")

    def step(weight):
        torch.manual_seed(0)
        generator, discriminator = Generator(16, 8, CLASSES), Discriminator(8, CLASSES)
        gan = GAN(generator, discriminator, _sgd(generator), _sgd(discriminator))
        with torch.no_grad():
            wrong_before = F.binary_cross_entropy_with_logits(discriminator(real, wrong_classes), torch.zeros(32))
        metrics = train_step(Accelerator(cpu=True), gan, real, noise, 1.0, real_classes, fake_classes, 0.0,
                             wrong_classes if weight else None, weight)
        with torch.no_grad():
            logits = discriminator(real, torch.stack([real_classes, wrong_classes], dim=1))
        return metrics, wrong_before, logits

    metrics, wrong_before, logits = step(2.0)
    metrics_without, _, logits_without = step(0.0)
    # d_loss carries weight x the BCE of the wrong pairs (before the step: the step's own forward pass)
    torch.testing.assert_close(metrics[0] - metrics_without[0], 2.0 * wrong_before, rtol=0, atol=1e-5)
    torch.testing.assert_close(metrics[2:], metrics_without[2:])  # D(x) is still judged with the right classes
    # after one step, D tells an image's class from a wrong one better than without the term
    margin, margin_without = ((lg[:, 0] - lg[:, 1]).mean() for lg in (logits, logits_without))
    assert margin > margin_without


def test_a_mismatch_weight_without_wrong_classes_is_refused():
    real, noise, real_classes, fake_classes = _step_inputs()
    with pytest.raises(ValueError, match="wrong_classes"):
        train_step(Accelerator(cpu=True), _class_loss_gan(0.0), real, noise, 1.0, real_classes, fake_classes, 0.0,
                   None, 0.5)


def test_the_discriminator_judges_k_classes_per_image_in_one_pass():
    torch.manual_seed(0)
    discriminator = Discriminator(8, CLASSES, class_head=True).eval()
    images = torch.rand(12, 1, 28, 28) * 2 - 1
    classes = torch.randint(0, CLASSES, (12, 3))
    logits, class_logits = discriminator(images, classes, classify=True)
    assert logits.shape == (12, 3)
    for k in range(3):
        single, single_class_logits = discriminator(images, classes[:, k], classify=True)
        torch.testing.assert_close(logits[:, k], single)
        torch.testing.assert_close(class_logits, single_class_logits)


def test_the_step_uses_the_classes_it_is_given():
    def metrics_with(fake_classes):
        torch.manual_seed(0)
        generator, discriminator = Generator(16, 8, CLASSES), Discriminator(8, CLASSES)
        gan = GAN(generator, discriminator, _sgd(generator), _sgd(discriminator))
        torch.manual_seed(1)
        real, noise = torch.rand(16, 1, 28, 28) * 2 - 1, torch.randn(16, 16)
        return train_step(Accelerator(cpu=True), gan, real, noise, 1.0, torch.zeros(16, dtype=torch.long),
                          fake_classes)

    zeros, ones = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    assert not torch.equal(metrics_with(zeros), metrics_with(ones))


def test_a_class_head_reads_the_projections_features_and_is_added_after_the_others():
    torch.manual_seed(0)
    plain = Discriminator(num_classes=CLASSES)
    torch.manual_seed(0)
    headed = Discriminator(num_classes=CLASSES, class_head=True)
    assert set(headed.state_dict()) - set(plain.state_dict()) == {"class_head.weight", "class_head.bias"}
    for name, value in plain.state_dict().items():  # the same draws before it: only the head is new
        assert torch.equal(headed.state_dict()[name], value), name
    images, labels = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    logits, class_logits = headed(images, labels, classify=True)
    assert class_logits.shape == (6, CLASSES) and torch.equal(logits, headed(images, labels))
    features = headed.main[:-1](images).sum(dim=(2, 3))
    torch.testing.assert_close(class_logits, headed.class_head(features))
    with pytest.raises(ValueError, match="no class head"):
        plain(images, labels, classify=True)
    with pytest.raises(ValueError, match="needs a conditional discriminator"):
        Discriminator(class_head=True)


def test_conditional_batchnorm_starts_as_the_plain_generator_and_conditions_every_batchnorm():
    torch.manual_seed(0)
    plain = Generator(num_classes=CLASSES)
    torch.manual_seed(0)
    normed = Generator(num_classes=CLASSES, class_norm=True)
    added = set(normed.state_dict()) - set(plain.state_dict())
    assert added == {f"class_norm.{i}.{part}.weight" for i in range(3) for part in ("scale", "shift")}
    assert [normed.class_norm[i].scale.weight.shape for i in range(3)] == [(CLASSES, c) for c in (112, 56, 28)]
    for name, value in plain.state_dict().items():  # the same draws before it, and none for it
        assert torch.equal(normed.state_dict()[name], value), name
    z, labels = torch.randn(6, LATENT_DIM), torch.arange(6)
    assert torch.equal(normed(z, labels), plain(z, labels))  # zero scale and shift: the plain BatchNorm
    with torch.no_grad():
        normed.class_norm[2].shift.weight[3].fill_(0.5)  # class 3's shift in the last BatchNorm
    moved = (normed(z, labels) != plain(z, labels)).flatten(1).any(1)
    assert moved.tolist() == [False, False, False, True, False, False]  # only the images of class 3
    with pytest.raises(ValueError, match="needs a conditional generator"):
        Generator(class_norm=True)


def test_a_class_norm_generator_is_rebuilt_with_it_from_its_weights(tmp_path):
    torch.manual_seed(0)
    generator = Generator(16, 8, CLASSES, class_norm=True)
    with torch.no_grad():
        for affine in generator.class_norm:
            affine.scale.weight.normal_(0, 0.3)
            affine.shift.weight.normal_(0, 0.3)
    state = plain_state_dict(generator)
    assert torch.equal(state["class_norm.1.scale.weight"], generator.class_norm[1].scale.weight)
    ema = GeneratorEMA(generator, decay=0.5, device=torch.device("cpu"))
    z, labels = torch.randn(4, 16), torch.arange(4)
    assert torch.equal(ema.model(z, labels), generator.eval()(z, labels))
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"latent_dim": 16, "base_width": 8, "num_classes": CLASSES}))
    save_final_generators(tmp_path, generator, None, step=0)
    loaded, _ = load_generator(tmp_path)
    assert hasattr(loaded, "class_norm") and torch.equal(loaded(z, labels), generator(z, labels))


def _class_loss_gan(weight: float = 1.0, seed: int = 0) -> GAN:
    torch.manual_seed(seed)
    generator, discriminator = Generator(16, 8, CLASSES), Discriminator(8, CLASSES, class_head=weight > 0)
    return GAN(generator, discriminator, _sgd(generator), _sgd(discriminator))


def _step_inputs():
    torch.manual_seed(1)
    real, noise = torch.rand(32, 1, 28, 28) * 2 - 1, torch.randn(32, 16)
    return real, noise, torch.arange(32) % CLASSES, step_labels_tensor(0, 0, 32, CLASSES, "cpu")


def test_the_d_step_teaches_the_class_head_the_real_images_classes():
    real, noise, real_classes, fake_classes = _step_inputs()
    gan = _class_loss_gan()
    before = copy.deepcopy(gan.discriminator)
    gan.discriminator_optimizer.zero_grad()
    # the D step's class term alone, with the same inputs: its gradient is what the head receives
    _, class_logits = gan.discriminator(real, real_classes, classify=True)
    F.cross_entropy(class_logits, real_classes).backward()
    expected = {name: before.class_head.state_dict()[name] - 0.05 * p.grad
                for name, p in gan.discriminator.class_head.named_parameters()}
    gan.discriminator_optimizer.zero_grad()
    train_step(Accelerator(cpu=True), gan, real, noise, 1.0, real_classes, fake_classes, 1.0)
    for name, value in gan.discriminator.class_head.state_dict().items():
        # only the real images' cross-entropy reaches the head: the BCE terms do not read it, fakes do not teach it
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)
    with torch.no_grad():  # and the real images' classes became more likely
        after = F.cross_entropy(gan.discriminator(real, real_classes, classify=True)[1], real_classes)
        assert after < F.cross_entropy(before(real, real_classes, classify=True)[1], real_classes)


def test_the_g_step_adds_the_class_term_and_moves_the_requested_class_up():
    real, noise, real_classes, fake_classes = _step_inputs()

    def requested_log_probability(generator, discriminator):
        class_logits = discriminator(generator(noise, fake_classes), fake_classes, classify=True)[1]
        return class_logits.log_softmax(1).gather(1, fake_classes[:, None]).mean()

    def step(weight):
        gan = _class_loss_gan(1.0)  # the same two networks, head included, for both weights
        gan.discriminator_optimizer = torch.optim.SGD(gan.discriminator.parameters(), lr=0.0)  # D stays put
        initial = copy.deepcopy(gan.generator)
        metrics = train_step(Accelerator(cpu=True), gan, real, noise, 1.0, real_classes, fake_classes, weight)
        with torch.no_grad():
            gained = (requested_log_probability(gan.generator, gan.discriminator)
                      - requested_log_probability(initial, gan.discriminator))
            cross_entropies = [F.cross_entropy(gan.discriminator(images, classes, classify=True)[1], classes)
                               for images, classes in ((real, real_classes),
                                                       (initial(noise, fake_classes), fake_classes))]
        return metrics, gained, cross_entropies

    metrics, gained, (real_ce, fake_ce) = step(1.0)
    metrics_without, gained_without, _ = step(0.0)
    # d_loss and g_loss each carry weight x their cross-entropy: the real images' and the fakes'
    torch.testing.assert_close(metrics[0] - metrics_without[0], real_ce, rtol=0, atol=1e-5)
    torch.testing.assert_close(metrics[1] - metrics_without[1], fake_ce, rtol=0, atol=1e-5)
    assert gained > 0 and gained > gained_without  # the class term moved the fakes towards their requested classes


def test_ema_of_a_conditional_generator_averages_and_restores_its_embedding():
    torch.manual_seed(0)
    generator = Generator(num_classes=CLASSES)
    ema = GeneratorEMA(generator, decay=0.5, device=torch.device("cpu"))
    assert ema.model.num_classes == CLASSES and ema.model.latent_dim == LATENT_DIM
    with torch.no_grad():
        generator.label_embedding.weight.add_(1.0)
    ema.update(generator)
    weight = generator.label_embedding.weight
    torch.testing.assert_close(ema.model.label_embedding.weight, 0.1 * (weight - 1.0) + 0.9 * weight)  # decay 0.1
    restored = GeneratorEMA(Generator(num_classes=CLASSES), decay=0.5, device=torch.device("cpu"))
    restored.load_tensors(ema.tensors())
    assert restored.updates == 1
    assert torch.equal(restored.model.label_embedding.weight, ema.model.label_embedding.weight)


def _rows(classes: int = CLASSES) -> ClassRows:
    exemplars = np.stack([np.full((28, 28), 200 + label, np.uint8) for label in range(classes)])
    return ClassRows(exemplars, CLASS_NAMES[:classes], CLASS_CHARACTERS[:classes])


def test_the_labelled_grid_has_one_row_per_class_led_by_its_real_image():
    images = np.repeat(np.arange(CLASSES, dtype=np.uint8), GRID_COLUMNS)[:, None, None] * np.ones((28, 28), np.uint8)
    picture = grid_image(images, _rows(), pad=2)
    assert picture.shape == (CLASSES * 30 + 2, 32 + DIVIDER + GRID_COLUMNS * 30 + 2)
    samples_left = 32 + DIVIDER
    for label in range(CLASSES):
        top = 2 + label * 30
        assert (picture[top : top + 28, 2:30] == 200 + label).all()  # the class's real image leads its row
        assert (picture[top : top + 28, 32 : 32 + DIVIDER] == 0).all()  # then the divider
        row = picture[top - 2 : top + 30, samples_left:]  # then the class's samples, with the pad around them
        assert np.array_equal(row, tile(images[label * GRID_COLUMNS : (label + 1) * GRID_COLUMNS], columns=8))
    assert np.array_equal(grid_image(images), tile(images, columns=GRID_COLUMNS))  # unconditional: the chapter's
    with pytest.raises(ValueError, match="8 images a class"):
        grid_image(images[:-1], _rows())
    assert _rows(3).legend() == "rows: 0 お (o), 1 き (ki), 2 す (su)"


# ---------------------------------------------------------------- real runs: 1 and 2 processes, kill and resume

STEPS = 20
FLAGS = ("--split", "test", "--no-download", "--num-classes", str(CLASSES), "--log-every", "5", "--eval-every", "0")


def _flags(data_dir, output_dir, run_name, *extra):
    return ["--data-dir", str(data_dir), "--output-dir", str(output_dir), "--run-name", run_name, *FLAGS,
            "--max-steps", str(STEPS), *extra]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def world_size_runs(shared_data, tmp_path_factory):
    """20 conditional steps with 1 and with 2 processes, same seed and global batch, float64 (see test_train.py)."""
    out = tmp_path_factory.mktemp("conditional-world-size")
    for processes in (1, 2):
        run_command(train_command(*_flags(shared_data, out, f"p{processes}", "--dtype", "float64", "--ema-decay", "0",
                                          "--report-to", "none"), processes=processes), timeout=400)
    return out


@pytest.mark.slow  # two real runs, one of them 2 gloo processes
@pytest.mark.timeout(900)
def test_world_size_invariance_of_a_conditional_run(world_size_runs):
    one = load_file(str(world_size_runs / "p1" / GENERATOR_FILE))
    two = load_file(str(world_size_runs / "p2" / GENERATOR_FILE))
    assert "label_embedding.weight" in one
    assert _max_difference(one, two) <= 1e-4
    torch.manual_seed(0)
    initial = Generator(num_classes=CLASSES).state_dict()
    assert (one["label_embedding.weight"] - initial["label_embedding.weight"]).abs().max() > 1e-3  # it learned
    configs = [json.loads((world_size_runs / run / CONFIG_FILE).read_text()) for run in ("p1", "p2")]
    assert [(c["world_size"], c["final_step"], c["num_classes"]) for c in configs] == [(1, STEPS, 10), (2, STEPS, 10)]
    assert all(c["class_names"] == CHARACTERS for c in configs)
    # the conditional defaults, the matching-aware loss's wrong classes included, hold across world sizes
    assert all(c["mismatch_loss_weight"] == MISMATCH_LOSS_WEIGHT > 0 and c["class_loss_weight"] > 0 for c in configs)


@pytest.fixture(scope="module")
def conditional_run(shared_data, tmp_path_factory):
    """An uninterrupted conditional run with EMA, W&B (offline), an evaluation and checkpoints every 10 steps."""
    out = tmp_path_factory.mktemp("conditional")
    env = {"WANDB_API_KEY": None, "WANDB_MODE": "offline", "HOME": str(out)}
    run_command(train_command(*_flags(shared_data, out, "reference", "--checkpoint-every", "10", "--sample-every",
                                      "10", "--eval-every", str(STEPS), "--eval-samples", "500")), env=env)
    return out / "reference"


@pytest.mark.slow
def test_a_conditional_run_records_its_classes(conditional_run):
    config = json.loads((conditional_run / CONFIG_FILE).read_text())
    assert config["num_classes"] == CLASSES and config["class_names"] == CHARACTERS
    with safe_open(str(conditional_run / GENERATOR_FILE), "pt") as file:
        metadata = file.metadata()
    assert metadata["num_classes"] == "10" and json.loads(metadata["class_names"]) == CHARACTERS
    generator, _ = load_generator(conditional_run)
    assert generator.num_classes == CLASSES
    state = load_file(str(conditional_run / CHECKPOINTS / "step_20" / STATE_TENSORS))
    assert torch.equal(state["fixed_labels"], torch.arange(CLASSES).repeat_interleave(GRID_COLUMNS))
    assert "ema.label_embedding.weight" in state and state["grids"].shape == (2, GRID_COLUMNS * CLASSES, 28, 28)
    with open(conditional_run / METRICS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["eval/fid"]) > 0  # --eval-every evaluated the conditional generator, per class too
    assert 0 <= float(rows[-1]["eval/class_accuracy"]) <= 1 and float(rows[-1]["eval/class_fid_worst"]) > 0


@pytest.mark.slow
def test_the_pictures_and_wandb_grids_have_one_row_per_class(conditional_run, shared_data):
    (log,) = (conditional_run / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_records(log)
    assert config_values(records)["class_names"] == json.dumps(CHARACTERS, ensure_ascii=False)
    grids = [row for row in history_rows(records) if "samples/fixed_noise/_type" in row]
    assert [row["step"] for row in grids] == [10, 20]
    state = load_file(str(conditional_run / CHECKPOINTS / "step_20" / STATE_TENSORS))
    exemplars = class_exemplars(load_kmnist(shared_data, "test", download=False), CLASSES).numpy()
    expected = grid_image(state["grids"][-1].numpy(), ClassRows(exemplars, CLASS_NAMES, CLASS_CHARACTERS))
    last = grids[-1]
    assert last["samples/fixed_noise/caption"].startswith("step 20; rows: 0 お (o), 1 き (ki)")
    path = log.parent / "files" / last["samples/fixed_noise/path"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == last["samples/fixed_noise/sha256"]
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (CLASSES * 30 + 2, 32 + DIVIDER + GRID_COLUMNS * 30 + 2)
    assert np.array_equal(pixels, expected)  # the step's grid, each row led by its class's first real image
    for name in (SAMPLES_OVER_TIME, SAMPLES_FINAL):
        with Image.open(conditional_run / name) as image:
            assert len(np.unique(np.asarray(image.convert("L")))) > 10


@pytest.mark.slow
def test_a_killed_conditional_run_resumes_exactly(conditional_run, shared_data, tmp_path):
    flags = _flags(shared_data, tmp_path, "killed", "--checkpoint-every", "10", "--sample-every", "10",
                   "--report-to", "none")
    process = subprocess.Popen(train_command(*flags), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / CHECKPOINTS / "step_10").is_dir():
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint at step 10"
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=30)
    assert not (tmp_path / "killed" / GENERATOR_FILE).exists()
    refused = run_command(train_command(*flags, "--resume", "latest", "--num-classes", "0"), check=False)
    assert refused.returncode == 2 and "--num-classes 0" in refused.stderr  # the class count defines the run
    result = run_command(train_command(*flags, "--resume", "latest"))
    assert "resumed from" in result.stdout
    reference = load_file(str(conditional_run / GENERATOR_FILE))
    resumed = load_file(str(tmp_path / "killed" / GENERATOR_FILE))
    assert _max_difference(reference, resumed) == 0  # bit for bit, the EMA weights with their embedding
