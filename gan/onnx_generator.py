"""Run the exported generator with onnxruntime: numpy and onnxruntime only, so any Python app can use it.

The model's interface (written by ``export.py``, documented in docs/deployment.md):
input ``z`` float32 [batch, latent_dim] -> output ``images`` float32 [batch, 1, 28, 28] in [-1, 1];
``latent_dim`` and the run's provenance are in the model's metadata (``session.get_modelmeta()``). A
class-conditional model has a second input ``labels`` int64 [batch] (class indices), and its metadata holds
``num_classes``, ``class_names`` (the characters) and ``class_names_romanized`` (JSON lists in label order).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gan.noise import latent_noise, latent_noise_batches, sample_labels

INPUT_NAME = "z"
LABELS_NAME = "labels"  # a class-conditional model's second input: int64 [batch]
OUTPUT_NAME = "images"
BATCH_AXIS = "batch"
MODEL_FILE = "generator.onnx"  # the model's name in a run folder (export.py writes it) and in a Hub repo
IMAGE_SHAPE = (1, 28, 28)  # one output image (gan.models.IMAGE_SHAPE, which needs torch)

# One intra-op thread: at batch 1 more threads gain nothing, and onnxruntime's default pool (one spinning thread
# per core) takes CPU from every other process on a small machine (docs/deployment.md has the measurements).
# Pass intra_op_threads=0 for large batches on a machine of its own.
DEFAULT_INTRA_OP_THREADS = 1
# Images per onnxruntime call when generating many: onnxruntime's activations grow with the batch (about 90 MB
# at 1,000 and 380 MB at 4,096 for the default generator), and larger batches are no faster per image.
GENERATE_BATCH = 1000

# A class of a conditional model: its index (3), its character ("つ") or its romanized name ("tsu"). The labels of a
# call are one class for every image, a sequence of classes (one per image), or None: the classes in turn.
Label = int | np.integer | str
Labels = Label | Sequence[Label] | np.ndarray | None


class ModelError(RuntimeError):
    """An ONNX file is missing, unreadable, lacks the generator's interface or computes NaN/inf; says what to do."""


def one_label(labels: Labels) -> bool:
    """Is ``labels`` one label for every image (not a list or array of them)?"""
    return isinstance(labels, str) or not isinstance(labels, (Sequence, np.ndarray))


class Classes:
    """What a conditional model's labels mean: turns indices, characters and romanized names into class indices."""

    def __init__(self, characters: Sequence[str], romanized: Sequence[str] = ()):
        self.characters, self.romanized = tuple(characters), tuple(romanized)
        self.count = len(self.characters)
        self._by_name = {name: index for names in (self.characters, self.romanized) for index, name in enumerate(names)}

    def describe(self) -> str:
        """The valid classes, for messages: '0 お (o), 1 き (ki), ...'."""
        romanized = self.romanized or ("",) * self.count
        named = zip(self.characters, romanized, strict=True)
        return ", ".join(f"{i} {c}" + (f" ({r})" if r else "") for i, (c, r) in enumerate(named))

    def index(self, label: object) -> int:
        """The class index of one label (an int, a decimal string, a character or a romanized name); otherwise a
        ValueError that names the value and the valid classes."""
        if isinstance(label, np.generic):
            label = label.item()
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < self.count:
            return label
        if isinstance(label, str):
            name = label.strip()
            for key in (name, name.lower()):
                if key in self._by_name:
                    return self._by_name[key]
            if name.isascii() and name.isdecimal() and int(name) < self.count:
                return int(name)
        raise ValueError(
            f"label {label!r} is not a class of this model; its {self.count} classes are {self.describe()} "
            f"(give the index, the character or the romanized name)"
        )

    def labels(self, labels: Labels, count: int) -> np.ndarray:
        """int64 [count]: one label for every image, ``count`` labels, or for None the classes in turn
        (:func:`gan.noise.sample_labels`). A ValueError names a bad value, its place and the valid classes."""
        if labels is None:
            return sample_labels(count, self.count)
        if one_label(labels):
            return np.full(count, self.index(labels), dtype=np.int64)
        expected = f"one label or a list of {count} (one per image)"
        if isinstance(labels, np.ndarray) and labels.ndim != 1:
            raise ValueError(f"labels must be {expected}, got an array of shape {list(labels.shape)}")
        if len(labels) != count:
            raise ValueError(f"labels must be {expected}, got {len(labels)} labels")
        if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":  # a whole array at once: a million is quick
            outside = np.flatnonzero((labels < 0) | (labels >= self.count))
            for position in outside[:1]:
                self._index_at(position, labels[position])
            return labels.astype(np.int64)
        return np.array([self._index_at(position, label) for position, label in enumerate(labels)], dtype=np.int64)

    def _index_at(self, position: int, label: object) -> int:
        try:
            return self.index(label)
        except ValueError as error:
            raise ValueError(f"labels[{position}]: {error}") from None


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
    >>> generator = OnnxGenerator.from_pretrained("USER/NAME")   # a model published with gan.hub (cached)
    >>> images = generator.generate(64, seed=0)          # uint8 [64, 28, 28]
    >>> images = generator.generate_from_noise(z)        # z: float32 [N, latent_dim]
    >>> batches = generator.generate_batches(10**6)      # iterator: uint8 [<= 1000, 28, 28] at a time

    A class-conditional model (``num_classes`` > 0) also takes ``labels`` in each of them (:data:`Labels`); without
    them the images go through the classes in turn (:func:`gan.noise.sample_labels`), as ``gan.evaluate`` asks.

    >>> images = generator.generate(20, seed=0, labels="つ")   # 20 of class 3 (also labels=3 or labels="tsu")
    """

    def __init__(self, model_path: str | os.PathLike, intra_op_threads: int = DEFAULT_INTRA_OP_THREADS):
        self.model_path = Path(model_path)
        self.session = open_session(self.model_path, intra_op_threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.latent_dim = self._check_interface()
        self.classes = self._read_classes()  # None: the chapter's unconditional model

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str = MODEL_FILE,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **session_kwargs,
    ) -> OnnxGenerator:
        """The generator published in the Hub model repo ``repo_id`` (``USER/NAME``, e.g. by ``gan.hub``).

        The file is downloaded once into the Hugging Face cache (``cache_dir``, default ``~/.cache/huggingface/hub``)
        and read from there afterwards; without a network (or with ``local_files_only=True`` or
        ``HF_HUB_OFFLINE=1``) the cached copy is used. The interface comes from the file, as with the constructor,
        which also receives ``session_kwargs`` (``intra_op_threads``). A :class:`ModelError` says what is missing
        (the repo, the file, or a cached copy while offline) and what to do.
        """
        # Imported here: plain inference from a local file must not need (or pay for importing) huggingface_hub.
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{filename!r} of the Hub model repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
                library_name="kmnist-gan",
            )
        except LocalEntryNotFoundError:  # offline (flag, HF_HUB_OFFLINE or no network) and not in the cache
            raise ModelError(
                f"{where} is not in the Hugging Face cache ({cache_dir or 'the default cache'}) and the Hub was not "
                f"asked or could not be reached (local_files_only, HF_HUB_OFFLINE=1 or no network). Download it "
                f"once with a network (call again without local_files_only / HF_HUB_OFFLINE), or copy the file "
                f"and open it with OnnxGenerator(path)."
            ) from None
        except RepositoryNotFoundError:  # also a private or gated repo without a token that may read it
            raise ModelError(
                f"the Hub has no model repo {repo_id!r} that this token may read: check the id (USER/NAME), and "
                f"for a private repo log in (`hf auth login`) or pass token=..."
            ) from None
        except RevisionNotFoundError:
            raise ModelError(f"the Hub model repo {repo_id!r} has no revision {revision!r}") from None
        except EntryNotFoundError:
            raise ModelError(
                f"the Hub model repo {repo_id!r} has no file {filename!r}: was it published with gan.hub "
                f"(python -m gan.card / push_to_hub)? Pass filename= for another name, e.g. 'generator.fp16.onnx'."
            ) from None
        except HFValidationError as error:
            raise ModelError(f"{repo_id!r} is not a Hub repo id ({error}); give it as USER/NAME") from None
        except HfHubHTTPError as error:  # the Hub answered with another error (401, 5xx, ...)
            raise ModelError(f"cannot download {where}: {str(error).splitlines()[0]}") from None
        return cls(path, **session_kwargs)

    @property
    def num_classes(self) -> int:
        """The number of classes the model is conditioned on; 0 for an unconditional model."""
        return self.classes.count if self.classes is not None else 0

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' characters in label order (お, き, す, ...); empty for an unconditional model."""
        return self.classes.characters if self.classes is not None else ()

    def _check_interface(self) -> int:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        found = f"inputs {[(i.name, i.type, i.shape) for i in inputs]}, outputs {[(o.name, o.shape) for o in outputs]}"
        labels_input_ok = len(inputs) == 1 or (
            len(inputs) == 2
            and inputs[1].name == LABELS_NAME
            and inputs[1].type == "tensor(int64)"
            and len(inputs[1].shape) == 1
        )
        if (
            not labels_input_ok
            or inputs[0].name != INPUT_NAME
            or inputs[0].type != "tensor(float)"
            or len(inputs[0].shape) != 2
            or len(outputs) != 1
            or outputs[0].name != OUTPUT_NAME
            or tuple(outputs[0].shape[1:]) != IMAGE_SHAPE
        ):
            raise ModelError(
                f"{self.model_path} is not a generator exported by export.py: expected one input "
                f"'{INPUT_NAME}' float32 [{BATCH_AXIS}, latent_dim] (a class-conditional one also '{LABELS_NAME}' "
                f"int64 [{BATCH_AXIS}]) and one output '{OUTPUT_NAME}' "
                f"[{BATCH_AXIS}, {', '.join(map(str, IMAGE_SHAPE))}], found {found}. Re-export it with "
                f"`python export.py RUN_DIR`."
            )
        latent_dim = inputs[0].shape[1]
        if not isinstance(latent_dim, int):
            raise ModelError(f"{self.model_path}: the latent size of input '{INPUT_NAME}' is not fixed ({found}).")
        return latent_dim

    def _read_classes(self) -> Classes | None:
        """The classes of a conditional model (one with a 'labels' input) from its metadata; None if unconditional."""
        if len(self.session.get_inputs()) == 1:
            return None
        try:
            count = int(self.metadata["num_classes"])
            characters = json.loads(self.metadata["class_names"])
            romanized = json.loads(self.metadata.get("class_names_romanized", "[]"))
            valid = count >= 1 and len(characters) == count and len(romanized) in (0, count)
            valid = valid and all(isinstance(name, str) and name for name in [*characters, *romanized])
        except (KeyError, ValueError, TypeError):
            valid = False
        if not valid:
            found = {key: self.metadata.get(key) for key in ("num_classes", "class_names", "class_names_romanized")}
            raise ModelError(
                f"{self.model_path} has a '{LABELS_NAME}' input, but its metadata does not say what the labels mean: "
                f"expected num_classes and class_names (a JSON list of that many names), found {found}. Re-export "
                f"it with `python export.py RUN_DIR`."
            )
        return Classes(characters, romanized)

    def check_labels(self, labels: Labels, count: int) -> np.ndarray | None:
        """``labels`` for ``count`` images as the model takes them: int64 [count], or None for an unconditional
        model. A ValueError, naming the value and the valid classes, for a class the model does not have, and for
        any labels given to an unconditional model."""
        if self.classes is not None:
            return self.classes.labels(labels, count)
        if labels is not None:
            raise ValueError(
                f"{self.model_path} is not class-conditional (it has no '{LABELS_NAME}' input), so it takes no "
                f"labels, got {labels!r}; generate without labels, or export a run trained with --num-classes"
            )
        return None

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

    def generate_raw(self, z: np.ndarray, labels: Labels = None) -> np.ndarray:
        """The model's output for noise ``z`` (and, if conditional, ``labels``): float32 [N, 1, 28, 28] in [-1, 1].

        Noise and labels are checked before onnxruntime sees them. A :class:`ModelError` if the model computes
        NaN/inf: uint8 conversion would show them as black images.
        """
        feeds = {INPUT_NAME: self.check_noise(z)}
        label_array = self.check_labels(labels, len(z))
        if label_array is not None:
            feeds[LABELS_NAME] = label_array
        images = self.session.run([OUTPUT_NAME], feeds)[0]
        bad = len(images) - np.count_nonzero(np.isfinite(images).reshape(len(images), -1).all(axis=1))
        if bad:
            raise ModelError(
                f"{self.model_path} produced NaN/inf for {bad} of {len(images)} images: its weights are likely not "
                f"finite (exported from a run that diverged). Export a run that trained without diverging: "
                f"python export.py RUN_DIR --output {self.model_path}"
            )
        return images

    def generate_from_noise(self, z: np.ndarray, labels: Labels = None) -> np.ndarray:
        """uint8 images [N, 28, 28] for noise ``z`` float32 [N, latent_dim] (and, if conditional, ``labels``)."""
        return to_uint8(self.generate_raw(z, labels))[:, 0]

    def generate(self, n: int, seed: int = 0, labels: Labels = None) -> np.ndarray:
        """``n`` uint8 images [n, 28, 28] from the noise of ``seed`` (and, if conditional, of the classes
        ``labels``)."""
        return np.concatenate(list(self.generate_batches(n, seed, labels=labels)))

    def generate_batches(
        self, n: int, seed: int = 0, batch_size: int = GENERATE_BATCH, labels: Labels = None
    ) -> Iterator[np.ndarray]:
        """:meth:`generate`'s images as consecutive uint8 batches [<= batch_size, 28, 28], so that any ``n`` fits in
        memory; the images are those of one call (the same noise stream and labels, and each image depends on its
        own noise and label only). Bad labels are refused here, before the first batch."""
        noise = latent_noise_batches(seed, "samples", n, self.latent_dim, batch_size)
        labels_of = self._label_batches(labels, n, batch_size)  # as long as noise, or endless Nones
        return (self.generate_from_noise(z, batch) for z, batch in zip(noise, labels_of, strict=False))

    def _label_batches(self, labels: Labels, n: int, batch_size: int) -> Iterator[np.ndarray | None]:
        """The labels of :meth:`generate_batches`'s batches, made a batch at a time where they are not given."""
        if self.classes is None:
            self.check_labels(labels, n)  # refuses labels: the model takes none
            return itertools.repeat(None)
        starts = range(0, n, batch_size)
        if labels is None:  # sample_labels(n) a piece at a time: the piece from `start` begins at class start % k
            k = self.num_classes
            return (sample_labels(min(batch_size, n - start) + start % k, k)[start % k :] for start in starts)
        if one_label(labels):
            index = self.classes.index(labels)
            return (np.full(min(batch_size, n - start), index, dtype=np.int64) for start in starts)
        every = self.classes.labels(labels, n)
        return (every[start : start + batch_size] for start in starts)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 [0, 255]: the numpy twin of ``gan.data.to_uint8`` (a torch one)."""
    return np.rint((np.clip(images, -1.0, 1.0) + 1.0) * np.float32(127.5)).astype(np.uint8)

