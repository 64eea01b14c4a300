"""One typed training config: CLI flags map one to one onto its fields; defaults are the chapter's."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan.cli import (
    HelpFormatter,
    add_dataclass_flags,
    at_least_one,
    field_flag,
    flag_name,
    given_fields,
    parse_validated,
)
from gan.data import NUM_CLASSES, SPLIT_SIZES, SPLITS
from gan.noise import seed_problem

MIXED_PRECISION = ("no", "fp16", "bf16")
# The chapter's Adam is lr 2e-4, betas (0.5, 0.999) for both networks. These defaults replace it because they
# measurably win at the chapter's budget (docs/tuning.md; benchmarks/tune_recipe.py):
# no momentum and a short second-moment memory (betas (0, 0.9)), and a generator that learns 5x faster.
LR_GENERATOR = 2e-3
LR_DISCRIMINATOR = 4e-4
# A class-conditional run's discriminator has more to learn (is this image of this class?), and both networks
# measurably do better at the chapter's budget when both learn faster (docs/conditional.md).
LR_GENERATOR_CONDITIONAL = 4e-3
LR_DISCRIMINATOR_CONDITIONAL = 1.6e-3
BETA1 = 0.0
BETA2 = 0.9
# Upper bounds that keep a typo from allocating gigabytes or overflowing a library call late in the run.
MAX_LATENT_DIM = 4096
MAX_BASE_WIDTH = 512  # the discriminator's widest layer is 4x this: 2,048 channels
MAX_DIST_TIMEOUT = 7 * 24 * 3600
MAX_EVAL_SAMPLES = 100_000
# Weight of a conditional run's auxiliary classification loss (AC-GAN) unless --class-loss-weight says otherwise:
# measured at the chapter's budget in docs/conditional.md (benchmarks/conditional_study.py).
CLASS_LOSS_WEIGHT = 0.1
# Weight of a conditional run's matching-aware loss (real images shown with a wrong class, labelled fake) unless
# --mismatch-loss-weight says otherwise: measured there too.
MISMATCH_LOSS_WEIGHT = 1.0


# --help lists the flags in these groups, in this order.
FLAG_GROUPS = {
    "data": "data",
    "model": "model",
    "optimizer": "optimizer and schedule",
    "devices": "precision and devices",
    "run": "run folder and tracking",
    "checkpoints": "checkpoints and resume",
    "evaluation": "evaluation during training",
    "publish": "publishing the trained model",
}


class SetupError(ValueError):
    """A setting that cannot work with the processes, devices or run folders of this launch (exit status 2)."""


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in ``config.json`` and in every checkpoint."""

    data_dir: str = field(
        default="data", metadata=field_flag("folder with KMNIST/raw/ (downloaded there if missing)", group="data")
    )
    split: str = field(
        default="train",
        metadata=field_flag(
            "train: 60,000 images (the chapter's), test: 10,000, all: 70,000", choices=SPLITS, group="data"
        ),
    )
    no_download: bool = field(
        default=False, metadata=field_flag("never download; fail if a file is missing", group="data")
    )
    epochs: int = field(default=5, metadata=field_flag("passes over the split", group="optimizer"))
    max_steps: int = field(
        default=0, metadata=field_flag("stop after this many steps (0: no limit)", group="optimizer")
    )
    batch_size: int = field(
        default=128, metadata=field_flag("GLOBAL batch size, split evenly across processes", group="optimizer")
    )
    lr: float | None = field(
        default=None,
        metadata=field_flag(
            "Adam learning rate of both networks (the chapter's: 2e-4); --lr-generator and "
            "--lr-discriminator override it per network",
            group="optimizer",
        ),
    )
    lr_generator: float | None = field(
        default=None,
        metadata=field_flag(
            f"Adam learning rate of the generator (default: --lr if given, else {LR_GENERATOR}; "
            f"{LR_GENERATOR_CONDITIONAL} with --num-classes)",
            group="optimizer",
        ),
    )
    lr_discriminator: float | None = field(
        default=None,
        metadata=field_flag(
            f"Adam learning rate of the discriminator (default: --lr if given, else {LR_DISCRIMINATOR}; "
            f"{LR_DISCRIMINATOR_CONDITIONAL} with --num-classes)",
            group="optimizer",
        ),
    )
    beta1: float = field(
        default=BETA1, metadata=field_flag("Adam beta1 of both networks (the chapter's: 0.5)", group="optimizer")
    )
    beta2: float = field(
        default=BETA2, metadata=field_flag("Adam beta2 of both networks (the chapter's: 0.999)", group="optimizer")
    )
    real_label: float = field(
        default=1.0,
        metadata=field_flag(
            "discriminator target for real images (e.g. 0.9: one-sided label smoothing)", group="optimizer"
        ),
    )
    latent_dim: int = field(default=100, metadata=field_flag("size of the generator's noise vector", group="model"))
    base_width: int = field(
        default=28, metadata=field_flag("channel width unit of both networks (the chapter's 28)", group="model")
    )
    num_classes: int = field(
        default=0,
        metadata=field_flag(
            "class-conditional training on KMNIST's first N classes (labels 0..N-1; 10: all of them), so that "
            "samples can be asked for by character; 0: the chapter's unconditional model",
            group="model",
        ),
    )
    class_loss_weight: float | None = field(
        default=None,
        metadata=field_flag(
            "weight of the auxiliary classification loss of a class-conditional run (AC-GAN): a class head on the "
            "discriminator learns the real images' classes, and the generator is rewarded when it reads its "
            f"samples as the requested class (default: {CLASS_LOSS_WEIGHT} with --num-classes, else 0; "
            "0: no class head)",
            group="model",
        ),
    )
    mismatch_loss_weight: float | None = field(
        default=None,
        metadata=field_flag(
            "weight of the matching-aware loss of a class-conditional run (Reed et al. 2016): the discriminator "
            "also sees each real image with a wrong class and learns to call that pair fake, so that the "
            f"generator must draw the class it is asked for (default: {MISMATCH_LOSS_WEIGHT} with --num-classes, "
            "else 0)",
            group="model",
        ),
    )
    class_norm: bool | None = field(
        default=None,
        metadata=field_flag(
            "conditional BatchNorm in the generator of a class-conditional run: a class-specific scale and shift "
            "after each of its BatchNorm layers, so that every layer sees the class (default: on with "
            "--num-classes)",
            action=argparse.BooleanOptionalAction,
            group="model",
        ),
    )
    seed: int = field(default=0, metadata=field_flag("run seed: weights, data order, noise", group="model"))
    mixed_precision: str | None = field(
        default=None,
        metadata=field_flag(
            "no|fp16|bf16 (default: the accelerate config's). bf16 is fast on GPUs and on CPUs with native bf16 "
            "(AVX512_BF16/AMX), ~10x slower than fp32 on other CPUs; fp16 needs a GPU",
            choices=MIXED_PRECISION,
            group="devices",
        ),
    )
    dtype: str = field(
        default="float32",
        metadata=field_flag(
            "weights and compute dtype (no autocast): float64 is for numerical verification, such as "
            "checking that 1 and N processes train the same model",
            choices=("float32", "float64"),
            group="devices",
        ),
    )
    channels_last: bool | None = field(
        default=None,
        metadata=field_flag(
            "keep both networks' weights and activations in channels-last memory format (NHWC): the "
            "same numbers, laid out as oneDNN prefers (default: on when training on CPU, where it was "
            "measured to help; off on GPU)",
            action=argparse.BooleanOptionalAction,
            group="devices",
        ),
    )
    cpu_kernels: bool | None = field(
        default=None,
        metadata=field_flag(
            "use the project's faster CPU kernels for the small convolutions and "
            "narrow BatchNorm layers (gan/cpu_kernels.py): the "
            "same model and gradients, computed differently (default: on when training on CPU)",
            action=argparse.BooleanOptionalAction,
            group="devices",
        ),
    )
    tf32: bool = field(
        default=False,
        metadata=field_flag(
            "let fp32 matrix products and cuDNN convolutions on NVIDIA GPUs run in TF32 (faster, 10-bit mantissa); "
            "off: fp32 is full fp32 (PyTorch's own default runs cuDNN convolutions in TF32)",
            action=argparse.BooleanOptionalAction,
            group="devices",
        ),
    )
    compile: bool = field(
        default=False,
        metadata=field_flag(
            "torch.compile both networks (inductor): the same model, run by generated fused kernels; the first "
            "steps compile (seconds to a minute). Off by default: slower on the measured CPUs (docs/training-speed.md)",
            group="devices",
        ),
    )
    cpu: bool = field(
        default=False,
        metadata=field_flag("train on CPU even where a GPU exists (gloo across processes)", group="devices"),
    )
    sync_bn: bool | None = field(
        default=None,
        metadata=field_flag(
            "synchronize BatchNorm statistics across processes (default: on when >1 process)",
            action=argparse.BooleanOptionalAction,
            group="devices",
        ),
    )
    output_dir: str = field(
        default="runs", metadata=field_flag("folder that receives one sub-folder per run", group="run")
    )
    run_name: str | None = field(
        default=None, metadata=field_flag("name of the run's folder (default: a timestamp)", group="run")
    )
    sample_every: int = field(default=50, metadata=field_flag("steps between fixed-noise sample grids", group="run"))
    log_every: int = field(
        default=50,
        metadata=field_flag(
            "steps between sync points, where the steps' losses are read from the device, checked, logged and a "
            "stop request (SIGTERM) is agreed; also between plain log lines when stdout is not a terminal",
            group="run",
        ),
    )
    report_to: str = field(
        default="wandb",
        metadata=field_flag("experiment tracker", choices=("wandb", "tensorboard", "none"), group="run"),
    )
    wandb_project: str = field(default="kmnist-gan", metadata=field_flag("W&B project", group="run"))
    wandb_entity: str | None = field(default=None, metadata=field_flag("W&B entity (team or user)", group="run"))
    wandb_mode: str | None = field(
        default=None,
        metadata=field_flag(
            "W&B mode (default: online when logged in and the server answers, else offline)",
            choices=("online", "offline", "disabled"),
            group="run",
        ),
    )
    push_to_hub: bool = field(
        default=False,
        metadata=field_flag("at the end (main process): export the final generator, verify it, write its model card "
                            "and publish them to the Hugging Face Hub, as export.py --push-to-hub does",
                            group="publish"),
    )
    hub_model_id: str | None = field(
        default=None,
        metadata=field_flag("the Hub repository, USER/NAME (default: your user name / the run's name)",
                            group="publish"),
    )
    private: bool = field(
        default=False, metadata=field_flag("with --push-to-hub: create the Hub repository private", group="publish")
    )
    ema_decay: float = field(
        default=0.999, metadata=field_flag("EMA decay of the generator's weights (0: no EMA)", group="optimizer")
    )
    checkpoint_every: int = field(
        default=0, metadata=field_flag("steps between checkpoints (0: once per epoch)", group="checkpoints")
    )
    keep_checkpoints: int = field(
        default=3, metadata=field_flag("how many of the newest checkpoints to keep", group="checkpoints")
    )
    resume: str | None = field(
        default=None,
        metadata=field_flag(
            "continue a run: 'latest' (the newest checkpoint of --run-name, or of the newest run), "
            "'auto' (latest if there is one, else start fresh), or a checkpoint/run folder",
            group="checkpoints",
        ),
    )
    eval_every: int | None = field(
        default=None,
        metadata=field_flag(
            "steps between sample-quality evaluations (FID, KID, coverage, ... of the sampled generator "
            "against the split; default: each epoch; 0: never)",
            group="evaluation",
        ),
    )
    eval_samples: int = field(default=2000, metadata=field_flag("generated images per evaluation", group="evaluation"))
    dist_timeout: int = field(
        default=600,
        metadata=field_flag("seconds a process waits for the others in a collective before failing", group="devices"),
    )
    dist_backend: str | None = field(
        default=None,
        metadata=field_flag(
            "torch.distributed backend (default: nccl on GPUs, gloo on CPU). gloo on GPUs also lets several "
            "processes share one GPU (for checks on a one-GPU machine; slow)",
            choices=("nccl", "gloo"),
            group="devices",
        ),
    )
    deterministic: bool = field(
        default=False, metadata=field_flag("use only deterministic kernels (slower on GPU)", group="devices")
    )
    # The fields this launch's command line set explicitly (not a flag; not saved): a resume takes every
    # other setting from the run.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        # per-network rates: their own flag, else --lr, else the measured defaults (a conditional run's own)
        if self.lr_generator is None:
            default = LR_GENERATOR_CONDITIONAL if self.num_classes else LR_GENERATOR
            self.lr_generator = self.lr if self.lr is not None else default
        if self.lr_discriminator is None:
            default = LR_DISCRIMINATOR_CONDITIONAL if self.num_classes else LR_DISCRIMINATOR
            self.lr_discriminator = self.lr if self.lr is not None else default
        # a conditional run's measured defaults; the chapter's model has none of them
        if self.class_loss_weight is None:
            self.class_loss_weight = CLASS_LOSS_WEIGHT if self.num_classes else 0.0
        if self.mismatch_loss_weight is None:
            self.mismatch_loss_weight = MISMATCH_LOSS_WEIGHT if self.num_classes else 0.0
        if self.class_norm is None:
            self.class_norm = bool(self.num_classes)

    def problems(self) -> list[str]:
        """Everything wrong with the values, as flag-named sentences (empty when all is well)."""
        positive = (
            "epochs",
            "batch_size",
            "latent_dim",
            "base_width",
            "sample_every",
            "log_every",
            "keep_checkpoints",
            "dist_timeout",
            "eval_samples",
        )
        found = at_least_one({name: getattr(self, name) for name in positive})
        for name in ("lr", "lr_generator", "lr_discriminator", "beta1", "beta2", "real_label", "ema_decay",
                     "class_loss_weight", "mismatch_loss_weight"):
            value = getattr(self, name)
            if value is not None and math.isinf(value):
                found.append(f"{flag_name(name)} must be finite, got {value}")
        for name, bound in (("latent_dim", MAX_LATENT_DIM), ("base_width", MAX_BASE_WIDTH),
                            ("dist_timeout", MAX_DIST_TIMEOUT), ("eval_samples", MAX_EVAL_SAMPLES)):
            if getattr(self, name) > bound:
                found.append(f"{flag_name(name)} must be at most {bound}, got {getattr(self, name)}")
        if self.push_to_hub or self.hub_model_id is not None or self.private:
            from gan.hub import hub_problems  # huggingface_hub and the exporter: only when publishing

            found += hub_problems(self.push_to_hub, self.hub_model_id, self.private, need_token=True)
        if self.num_classes and not 2 <= self.num_classes <= NUM_CLASSES:
            found.append(f"--num-classes must be 0 (unconditional) or 2..{NUM_CLASSES} (KMNIST has {NUM_CLASSES} "
                         f"classes), got {self.num_classes}")
        elif self.batch_size > self.training_images:
            classes = f" of its first {self.num_classes} classes" if self.num_classes else ""
            found.append(f"--batch-size {self.batch_size} is larger than the {self.split} split{classes} "
                         f"({self.training_images} images); choose at most that, or a larger --split")
        from gan.metrics import PRECISION_RECALL_K  # torchmetrics: imported only when checking this

        per_class = max(self.num_classes, 1)  # a conditional evaluation compares each class on its own
        least = (PRECISION_RECALL_K + 1) * per_class
        if 1 <= self.eval_samples < least and self.eval_every != 0:
            found.append(f"--eval-samples must be at least {least} (precision/recall compare each sample with its "
                         f"{PRECISION_RECALL_K} nearest neighbours{', in each class' if self.num_classes else ''}), "
                         f"got {self.eval_samples}")
        # the conditional losses' weights, and what the chapter's model lacks for each
        for name, lacking in (("class_loss_weight", "classes to learn"),
                              ("mismatch_loss_weight", "classes to mismatch")):
            weight = getattr(self, name)
            if not weight >= 0:  # also NaN
                found.append(f"{flag_name(name)} must be 0 or positive, got {weight}")
            elif weight and not self.num_classes:
                found.append(f"{flag_name(name)} {weight} needs a class-conditional run (--num-classes N): the "
                             f"chapter's unconditional model has no {lacking}; drop the flag")
        if self.class_norm and not self.num_classes:
            found.append("--class-norm needs a class-conditional run (--num-classes N); drop the flag")
        if self.max_steps < 0:
            found.append(f"--max-steps must be 0 (no limit) or positive, got {self.max_steps}")
        for name in ("lr", "lr_generator", "lr_discriminator"):
            value = getattr(self, name)
            inherited = name != "lr" and value == self.lr  # reported once, as --lr
            if value is not None and not inherited and not value > 0:
                found.append(f"{flag_name(name)} must be positive, got {value}")
        if not 0.5 < self.real_label <= 1:
            found.append(f"--real-label must be in (0.5, 1], got {self.real_label}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                found.append(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eval_every is not None and self.eval_every < 0:
            found.append(f"--eval-every must be 0 (never) or positive, got {self.eval_every}")
        if self.checkpoint_every < 0:
            found.append(f"--checkpoint-every must be 0 (once per epoch) or positive, got {self.checkpoint_every}")
        if not 0 <= self.ema_decay < 1:
            found.append(f"--ema-decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")
        if (problem := seed_problem(self.seed)) is not None:
            found.append(problem)
        if Path(self.data_dir).exists() and not Path(self.data_dir).is_dir():
            found.append(f"--data-dir {self.data_dir} is a file; give the folder that holds KMNIST/raw/")
        if self.run_name is not None and len(os.fsencode(self.run_name)) > 255:
            found.append(f"--run-name is {len(os.fsencode(self.run_name))} bytes long; file systems allow 255")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name in (".", "..")):
            found.append(f"--run-name must be a plain folder name, got {self.run_name!r}")
        if self.dtype == "float64" and self.mixed_precision not in (None, "no"):
            found.append(f"--dtype float64 cannot be combined with --mixed-precision {self.mixed_precision}")
        return found

    @property
    def training_images(self) -> int:
        """How many images the run trains on: the split, or the part of it in the first --num-classes classes
        (KMNIST's splits hold the same number of images of every class)."""
        return SPLIT_SIZES[self.split] * (self.num_classes or NUM_CLASSES) // NUM_CLASSES

    def to_dict(self) -> dict[str, Any]:
        """Every setting (what config.json records), without the record of this command line."""
        values = dataclasses.asdict(self)
        del values["given"]
        return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_ddp.py",
        description="Train the chapter's DCGAN on Kuzushiji-MNIST; run it with `accelerate launch train_ddp.py`.",
        formatter_class=HelpFormatter,
    )
    add_dataclass_flags(parser, TrainConfig, groups=FLAG_GROUPS)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags into a :class:`TrainConfig`; on any invalid value print every problem and exit with status 2."""
    parser = build_parser()
    config = parse_validated(parser, TrainConfig, argv)
    return dataclasses.replace(config, given=given_fields(parser, argv))
