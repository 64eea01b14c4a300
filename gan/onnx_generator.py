"""Run the exported generator with onnxruntime: numpy and onnxruntime only, so any Python app can use it.

The model's interface (written by ``export.py``, documented in the README):
input ``z`` float32 [batch, latent_dim] -> output ``images`` float32 [batch, 1, 28, 28] in [-1, 1];
``latent_dim`` and the run's provenance are in the model's metadata (``session.get_modelmeta()``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gan.noise import latent_noise, latent_noise_batches

INPUT_NAME = "z"
OUTPUT_NAME = "images"
BATCH_AXIS = "batch"
IMAGE_SHAPE = (1, 28, 28)  # one output image (gan.models.IMAGE_SHAPE, which needs torch)

# One intra-op thread: at batch 1 more threads gain nothing, and onnxruntime's default pool (one spinning thread
# per core) takes CPU from every other process on a small machine (docs/deployment.md has the measurements).
# Pass intra_op_threads=0 for large batches on a machine of its own.
DEFAULT_INTRA_OP_THREADS = 1
# Images per onnxruntime call when generating many: onnxruntime's activations grow with the batch (about 90 MB
# at 1,000 and 380 MB at 4,096 for the default generator), and larger batches are no faster per image.
GENERATE_BATCH = 1000


class ModelError(RuntimeError):
    """An ONNX file is missing, unreadable, lacks the generator's interface or computes NaN/inf; says what to do."""


def session_options(intra_op_threads: int = DEFAULT_INTRA_OP_THREADS) -> ort.SessionOptions:
    """Session options for the generator; ``intra_op_threads`` 0 is onnxruntime's default (one per core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1  # the graph is one chain of ops: nothing to run in parallel
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def open_session(
    model_path: str | os.PathLike, intra_op_threads: int = DEFAULT_INTRA_OP_THREADS
) -> ort.InferenceSession:
    """A CPU onnxruntime session on ``model_path``; a missing or corrupt file is a :class:`ModelError`."""
    path = Path(model_path)
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not an ONNX file; give the .onnx file, e.g. {path / 'generator.onnx'}")
    if not path.is_file():
        raise ModelError(f"{path} does not exist. Export a trained run first: python export.py RUN_DIR --output {path}")
    try:
        return ort.InferenceSession(str(path), session_options(intra_op_threads), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes for a bad file
        raise ModelError(
            f"{path} is not a loadable ONNX model ({type(error).__name__}: {error}). The file is corrupt, "
            f"truncated or not an ONNX file: re-export it with `python export.py RUN_DIR --output {path}`."
        ) from None


class OnnxGenerator:
    """The exported generator behind a small API: noise in, uint8 images [N, 28, 28] out.

    >>> generator = OnnxGenerator("runs/my-run/generator.onnx")
    >>> images = generator.generate(64, seed=0)          # uint8 [64, 28, 28]
    >>> images = generator.generate_from_noise(z)        # z: float32 [N, latent_dim]
    >>> batches = generator.generate_batches(10**6)      # iterator: uint8 [<= 1000, 28, 28] at a time
    """

    def __init__(self, model_path: str | os.PathLike, intra_op_threads: int = DEFAULT_INTRA_OP_THREADS):
        self.model_path = Path(model_path)
        self.session = open_session(self.model_path, intra_op_threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.latent_dim = self._check_interface()

    def _check_interface(self) -> int:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        found = f"inputs {[(i.name, i.type, i.shape) for i in inputs]}, outputs {[(o.name, o.shape) for o in outputs]}"
        if (
            len(inputs) != 1
            or inputs[0].name != INPUT_NAME
            or inputs[0].type != "tensor(float)"
            or len(inputs[0].shape) != 2
            or len(outputs) != 1
            or outputs[0].name != OUTPUT_NAME
            or tuple(outputs[0].shape[1:]) != IMAGE_SHAPE
        ):
            raise ModelError(
                f"{self.model_path} is not a generator exported by export.py: expected one input "
                f"'{INPUT_NAME}' float32 [{BATCH_AXIS}, latent_dim] and one output '{OUTPUT_NAME}' "
                f"[{BATCH_AXIS}, {', '.join(map(str, IMAGE_SHAPE))}], found {found}. Re-export it with "
                f"`python export.py RUN_DIR`."
            )
        latent_dim = inputs[0].shape[1]
        if not isinstance(latent_dim, int):
            raise ModelError(f"{self.model_path}: the latent size of input '{INPUT_NAME}' is not fixed ({found}).")
        return latent_dim

    def noise(self, n: int, seed: int) -> np.ndarray:
        """The sample noise of ``seed`` (:mod:`gan.noise`), float32 [n, latent_dim]: what a training run with
        ``--seed seed`` draws its final samples and evaluations from. ValueError unless ``n`` >= 1."""
        return latent_noise(seed, "samples", n, self.latent_dim)

    def check_noise(self, z: np.ndarray) -> np.ndarray:
        """``z`` as the model takes it, or a ValueError/TypeError that says what was expected."""
        expected = f"float32 [N, {self.latent_dim}] (N >= 1 noise vectors of this model's latent_dim)"
        if not isinstance(z, np.ndarray):
            raise TypeError(f"noise must be a numpy array {expected}, got {type(z).__name__}")
        if z.dtype != np.float32:
            raise TypeError(f"noise must be {expected}, got dtype {z.dtype}; convert it with z.astype(np.float32)")
        if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] != self.latent_dim:
            raise ValueError(f"noise must be {expected}, got shape {list(z.shape)}")
        bad = z.size - np.count_nonzero(np.isfinite(z))
        if bad:
            raise ValueError(f"noise must be finite, but {bad} of its {z.size} values are NaN/inf")
        return np.ascontiguousarray(z)

    def generate_raw(self, z: np.ndarray) -> np.ndarray:
        """The model's output for noise ``z``: float32 [N, 1, 28, 28] in [-1, 1].

        A :class:`ModelError` if the model computes NaN/inf: uint8 conversion would show them as black images.
        """
        images = self.session.run([OUTPUT_NAME], {INPUT_NAME: self.check_noise(z)})[0]
        bad = len(images) - np.count_nonzero(np.isfinite(images).reshape(len(images), -1).all(axis=1))
        if bad:
            raise ModelError(
                f"{self.model_path} produced NaN/inf for {bad} of {len(images)} images: its weights are likely not "
                f"finite (exported from a run that diverged). Export a run that trained without diverging: "
                f"python export.py RUN_DIR --output {self.model_path}"
            )
        return images

    def generate_from_noise(self, z: np.ndarray) -> np.ndarray:
        """uint8 images [N, 28, 28] for noise ``z`` float32 [N, latent_dim]."""
        return to_uint8(self.generate_raw(z))[:, 0]

    def generate(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` uint8 images [n, 28, 28] from the noise of ``seed``."""
        return np.concatenate(list(self.generate_batches(n, seed)))

    def generate_batches(self, n: int, seed: int = 0, batch_size: int = GENERATE_BATCH) -> Iterator[np.ndarray]:
        """:meth:`generate`'s images as consecutive uint8 batches [<= batch_size, 28, 28], so that any ``n`` fits in
        memory; the images are those of one call (the same noise stream, and each image depends on its noise only)."""
        noise = latent_noise_batches(seed, "samples", n, self.latent_dim, batch_size)
        return (self.generate_from_noise(z) for z in noise)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 [0, 255]: the numpy twin of ``gan.data.to_uint8`` (a torch one)."""
    return np.rint((np.clip(images, -1.0, 1.0) + 1.0) * np.float32(127.5)).astype(np.uint8)

