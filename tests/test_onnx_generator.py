"""gan/onnx_generator.py and ``python -m gan.generate`` on the exported fixture generators (the trained unconditional
one, a small class-conditional one), against PyTorch."""


from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import (
    EXPORT_RUN_NAME,
    SMALL_LATENT_DIM,
    ExportedRun,
    export_small_conditional_run,
    nan_onnx_model,
    run_command,
)
from PIL import Image

import gan.generate
from gan.artifacts import load_generator, read_config
from gan.data import CLASS_CHARACTERS, CLASS_NAMES
from gan.data import to_uint8 as torch_to_uint8
from gan.noise import sample_labels
from gan.onnx_generator import (
    DEFAULT_INTRA_OP_THREADS,
    GENERATE_BATCH,
    ModelError,
    OnnxGenerator,
    open_session,
    to_uint8,
)
from gan.pictures import tile


@pytest.fixture(scope="module")
def nan_model(run: ExportedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's model with a weight tensor of NaN: what an export of a diverged run computes with."""
    return nan_onnx_model(run.model, tmp_path_factory.mktemp("diverged") / "nan.onnx")


def test_generate_matches_pytorch_on_the_same_noise(run: ExportedRun, onnx_generator: OnnxGenerator) -> None:
    z = onnx_generator.noise(300, seed=5)
    assert z.dtype == np.float32 and z.shape == (300, 100)
    images = onnx_generator.generate_from_noise(z)
    assert images.dtype == np.uint8 and images.shape == (300, 28, 28)

    generator, _ = load_generator(run.run_dir)
    with torch.no_grad():
        expected = torch_to_uint8(generator(torch.from_numpy(z)))[:, 0].numpy()
    # The float outputs agree to ~1e-7, so only a value sitting on a rounding boundary may differ by one level.
    difference = np.abs(images.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    assert images.std() > 2  # trained outputs vary; a broken pipeline gives a flat grey


def test_the_same_seed_gives_the_same_images_and_another_seed_others(onnx_generator: OnnxGenerator) -> None:
    first = onnx_generator.generate(16, seed=3)
    assert np.array_equal(first, onnx_generator.generate(16, seed=3))
    assert not np.array_equal(first, onnx_generator.generate(16, seed=4))
    assert np.array_equal(first[:5], onnx_generator.generate(5, seed=3))  # the first images do not depend on n


def test_metadata_and_latent_size_come_from_the_file(run: ExportedRun, onnx_generator: OnnxGenerator) -> None:
    config = read_config(run.run_dir)
    assert onnx_generator.latent_dim == config["latent_dim"]
    assert onnx_generator.metadata["latent_dim"] == str(config["latent_dim"])
    assert onnx_generator.metadata["run_name"] == EXPORT_RUN_NAME


@pytest.mark.parametrize(
    ("noise", "error", "expected"),
    [
        (np.zeros((4, 64), np.float32), ValueError, r"float32 \[N, 100\].*got shape \[4, 64\]"),
        (np.zeros((4, 100, 1, 1), np.float32), ValueError, r"got shape \[4, 100, 1, 1\]"),
        (np.zeros((0, 100), np.float32), ValueError, r"got shape \[0, 100\]"),
        (
            np.zeros((4, 100), np.float64),
            TypeError,
            r"got dtype float64; convert it with z\.astype\(np\.float32\)",
        ),
        ([[0.0] * 100], TypeError, r"must be a numpy array float32 \[N, 100\].*got list"),
    ],
)
def test_wrong_noise_is_a_clear_error(onnx_generator: OnnxGenerator, noise, error, expected: str) -> None:
    with pytest.raises(error, match=expected):
        onnx_generator.generate_from_noise(noise)


def test_nonpositive_count_is_a_clear_error(onnx_generator: OnnxGenerator) -> None:
    with pytest.raises(ValueError, match="positive integer, got 0"):
        onnx_generator.generate(0)


def test_nonfinite_noise_is_refused_before_onnxruntime_runs(
    onnx_generator: OnnxGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run_must_not_be_called(*args, **kwargs):
        raise AssertionError("onnxruntime ran on NaN noise")

    monkeypatch.setattr(onnx_generator, "session", type("Session", (), {"run": run_must_not_be_called})())
    z = np.zeros((4, onnx_generator.latent_dim), np.float32)
    z[1, 3], z[2, 0] = np.nan, -np.inf
    with pytest.raises(ValueError, match=r"noise must be finite, but 2 of its 400 values are NaN/inf"):
        onnx_generator.generate_from_noise(z)


def test_a_model_that_computes_nan_is_an_error_not_black_images(nan_model: Path) -> None:
    generator = OnnxGenerator(nan_model)
    with pytest.raises(ModelError, match=r"nan\.onnx produced NaN/inf for 5 of 5 images: .* diverged"):
        generator.generate(5)


def test_generate_cli_refuses_a_nan_model_and_writes_nothing(nan_model: Path, tmp_path: Path) -> None:
    flags = ["--out", str(tmp_path / "grid.png"), "--npy", str(tmp_path / "images.npy")]
    result = run_command([sys.executable, "-m", "gan.generate", str(nan_model), *flags], timeout=60, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"{nan_model} produced NaN/inf" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no grid, no .npy, no temporary file


def test_batches_give_the_images_of_one_call_bit_for_bit(onnx_generator: OnnxGenerator) -> None:
    n = 2 * GENERATE_BATCH + 345  # not a multiple of the batch: the last one is short
    one_call = onnx_generator.generate_from_noise(onnx_generator.noise(n, seed=4))
    batches = list(onnx_generator.generate_batches(n, seed=4))
    assert [len(batch) for batch in batches] == [GENERATE_BATCH, GENERATE_BATCH, 345]
    assert np.array_equal(np.concatenate(batches), one_call)
    assert np.array_equal(np.concatenate(list(onnx_generator.generate_batches(n, seed=4, batch_size=7))), one_call)


def test_missing_corrupt_and_foreign_models_are_clear_errors(run: ExportedRun, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"absent\.onnx does not exist\. Export a trained run first"):
        OnnxGenerator(tmp_path / "absent.onnx")

    corrupt = tmp_path / "corrupt.onnx"
    data = bytearray(run.model.read_bytes())
    data[:64] = b"\xff" * 64  # a damaged header: not a protobuf any more
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"corrupt\.onnx is not a loadable ONNX model .* re-export it"):
        OnnxGenerator(corrupt)

    # A valid ONNX file that is not the generator (input 'x', no latent axis).
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])],
    )
    foreign = tmp_path / "identity.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(
        ModelError,
        match=r"identity\.onnx is not a generator exported by export\.py: expected one "
        r"input 'z'",
    ):
        OnnxGenerator(foreign)


def test_session_threads_setting_is_applied_and_does_not_change_results(run: ExportedRun) -> None:
    session = open_session(run.model)
    assert session.get_session_options().intra_op_num_threads == DEFAULT_INTRA_OP_THREADS
    assert open_session(run.model, intra_op_threads=2).get_session_options().intra_op_num_threads == 2
    one, default = OnnxGenerator(run.model, intra_op_threads=1), OnnxGenerator(run.model, intra_op_threads=0)
    z = one.noise(64, seed=0)
    assert np.abs(one.generate_raw(z) - default.generate_raw(z)).max() <= 1e-6


def test_numpy_to_uint8_is_the_twin_of_the_torch_one() -> None:
    values = np.array([-2.0, -1.0, -0.999, -0.5, 0.0, 1 / 255, 0.5, 0.998, 1.0, 3.0], dtype=np.float32)
    values = np.concatenate([values, np.linspace(-1, 1, 4097, dtype=np.float32)])  # includes .5 rounding cases
    assert np.array_equal(to_uint8(values), torch_to_uint8(torch.from_numpy(values)).numpy())


def test_tile_places_each_image() -> None:
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3) + 1
    grid = tile(images, columns=2, pad=1, fill=0)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1)
    assert np.array_equal(grid[1:3, 1:4], images[0]) and np.array_equal(grid[1:3, 5:8], images[1])
    assert np.array_equal(grid[7:9, 1:4], images[4])
    assert grid[0].sum() == 0 and grid[7:9, 5:8].sum() == 0  # padding and the empty sixth cell stay black


def test_inference_and_generate_cli_do_not_import_torch() -> None:
    code = "import sys, gan.onnx_generator, gan.generate; assert 'torch' not in sys.modules, 'torch was imported'"
    run_command([sys.executable, "-c", code], timeout=60)


def test_generate_cli_writes_grid_png_and_npy(onnx_generator: OnnxGenerator, run: ExportedRun, tmp_path: Path) -> None:
    out, npy = tmp_path / "out" / "grid.png", tmp_path / "images.npy"
    flags = ["--n", "10", "--seed", "7", "--out", str(out), "--npy", str(npy)]
    run_command([sys.executable, "-m", "gan.generate", str(run.model), *flags], timeout=60)
    expected = onnx_generator.generate(10, seed=7)
    assert np.array_equal(np.load(npy), expected)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.mode == "L"
        assert np.array_equal(np.asarray(png), tile(expected, fill=0))  # 4 columns x 3 rows


def test_generate_cli_writes_the_npy_batch_by_batch_and_grids_the_first_images(
    onnx_generator: OnnxGenerator, run: ExportedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(gan.generate, "GRID_LIMIT", 50)  # a small grid limit: the rule without 10,000 images
    out, npy = tmp_path / "grid.png", tmp_path / "images.npy"
    n = GENERATE_BATCH + 234
    assert gan.generate.main([str(run.model), "--n", str(n), "--seed", "2", "--out", str(out), "--npy", str(npy)]) == 0
    expected = onnx_generator.generate_from_noise(onnx_generator.noise(n, seed=2))  # one onnxruntime call
    assert np.array_equal(np.load(npy), expected)
    with Image.open(out) as png:
        assert np.array_equal(np.asarray(png), tile(expected[:50], fill=0))
    assert f"wrote the first 50 of {n} images" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "images.npy"]  # no temporary files

    with pytest.raises(SystemExit) as exited:  # more than a grid shows, and nowhere to put the rest
        gan.generate.main([str(run.model), "--n", "51", "--out", str(out)])
    assert exited.value.code == 2
    assert "--n 51 is more images than a grid shows (at most 50): add --npy" in capsys.readouterr().err


@pytest.mark.slow  # two real generate processes, their peak memory measured
def test_generate_cli_memory_does_not_grow_with_n(run: ExportedRun, tmp_path: Path) -> None:
    """Peak memory (ru_maxrss) of two real processes: twice the images, the same memory give or take a few MB."""
    measure = (
        "import resource, sys; from gan.generate import main; code = main(sys.argv[1:]); "
        "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    peaks = {}
    for n in (gan.generate.GRID_LIMIT + 1, 20_000):  # both above the grid limit: the same grid
        flags = ["--n", str(n), "--out", str(tmp_path / "g.png"), "--npy", str(tmp_path / "i.npy")]
        result = run_command([sys.executable, "-c", measure, str(run.model), *flags], timeout=120)
        peaks[n] = int(result.stdout.split("peak_kb")[-1]) / 1024  # MB
        assert np.load(tmp_path / "i.npy", mmap_mode="r").shape == (n, 28, 28)
    # Holding the extra ~10,000 images would add 8 MB as uint8 (16 MB once concatenated) and 31 MB as
    # onnxruntime's float32 output; in one onnxruntime call, hundreds of MB of activations.
    assert max(peaks.values()) - min(peaks.values()) < 5, peaks


def test_generate_cli_reports_a_corrupt_model(tmp_path: Path) -> None:
    model = tmp_path / "garbage.onnx"
    model.write_bytes(b"not an onnx file")
    command = [sys.executable, "-m", "gan.generate", str(model), "--out", str(tmp_path / "g.png")]
    result = run_command(command, timeout=60, check=False)
    assert result.returncode == 1
    assert "garbage.onnx is not a loadable ONNX model" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "g.png").exists()


# --- a class-conditional model: the small one of helpers.export_small_conditional_run, exported by export.py -------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> ExportedRun:
    return export_small_conditional_run(tmp_path_factory)


@pytest.fixture(scope="module")
def conditional(conditional_run: ExportedRun) -> OnnxGenerator:
    return OnnxGenerator(conditional_run.model)


def _without_onnxruntime(generator: OnnxGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    def run_must_not_be_called(*args, **kwargs):
        raise AssertionError("onnxruntime ran on labels that should have been refused")

    monkeypatch.setattr(generator, "session", type("Session", (), {"run": run_must_not_be_called})())


VALID_CLASSES = (
    "its 10 classes are 0 お (o), 1 き (ki), 2 す (su), 3 つ (tsu), 4 な (na), 5 は (ha), 6 ま (ma), 7 や (ya), "
    "8 れ (re), 9 を (wo)"
)


def test_conditional_model_reads_its_classes_from_the_file(conditional: OnnxGenerator) -> None:
    assert [(i.name, i.type) for i in conditional.session.get_inputs()] == [("z", "tensor(float)"),
                                                                              ("labels", "tensor(int64)")]
    assert conditional.num_classes == 10 and conditional.latent_dim == SMALL_LATENT_DIM
    assert conditional.class_names == CLASS_CHARACTERS
    assert conditional.classes.romanized == CLASS_NAMES
    assert conditional.classes.describe() in VALID_CLASSES


def test_unconditional_model_has_no_classes(onnx_generator: OnnxGenerator) -> None:
    assert onnx_generator.num_classes == 0 and onnx_generator.class_names == () and onnx_generator.classes is None


def test_conditional_images_match_pytorch_for_every_class(
    conditional_run: ExportedRun, conditional: OnnxGenerator
) -> None:
    z, labels = conditional.noise(50, seed=5), sample_labels(50, 10)
    images = conditional.generate_from_noise(z, labels)
    generator, _ = load_generator(conditional_run.run_dir)
    with torch.no_grad():
        expected = torch_to_uint8(generator(torch.from_numpy(z), torch.from_numpy(labels)))[:, 0].numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    # The label reaches the model: the same noise with another class is another image, every one of them.
    other = conditional.generate_from_noise(z, (labels + 1) % 10)
    assert all((other[i] != images[i]).mean() > 0.2 for i in range(50))


@pytest.mark.parametrize(
    "label",
    [3, "3", "つ", "tsu", "TSU", np.int64(3), ["つ"] * 12, np.full(12, 3)],
    ids=["3", "'3'", "tsu-character", "tsu", "TSU", "np.int64", "list", "array"],
)
def test_a_class_as_index_character_or_romanized_name_gives_the_same_images(
    conditional: OnnxGenerator, label
) -> None:
    expected = conditional.generate_from_noise(conditional.noise(12, seed=1), np.full(12, 3, dtype=np.int64))
    assert np.array_equal(conditional.generate(12, seed=1, labels=label), expected)


def test_a_list_of_labels_gives_each_image_its_class(conditional: OnnxGenerator) -> None:
    labels = ["お", "ki", 2, "3", "な", "ha", "ま", "ya", "れ", "wo"]
    z = conditional.noise(10, seed=2)
    mixed = conditional.generate_from_noise(z, labels)
    for index in range(10):
        assert np.array_equal(mixed[index], conditional.generate_from_noise(z[index : index + 1], index)[0])


def test_without_labels_a_conditional_model_goes_through_the_classes_in_turn(conditional: OnnxGenerator) -> None:
    n = 2 * GENERATE_BATCH + 345
    expected = conditional.generate_from_noise(conditional.noise(n, seed=4), sample_labels(n, 10))
    assert np.array_equal(conditional.generate(n, seed=4), expected)
    # In batches of 7 (the classes continue across batches), and the first images do not depend on n.
    assert np.array_equal(np.concatenate(list(conditional.generate_batches(n, seed=4, batch_size=7))), expected)
    assert np.array_equal(conditional.generate(13, seed=4), expected[:13])


@pytest.mark.parametrize("labels", ["は", [5] * 23, np.full(23, 5)], ids=["one", "list", "array"])
def test_batches_of_a_conditional_model_give_the_images_of_one_call(conditional: OnnxGenerator, labels) -> None:
    one_call = conditional.generate_from_noise(conditional.noise(23, seed=6), np.full(23, 5))
    assert np.array_equal(np.concatenate(list(conditional.generate_batches(23, seed=6, batch_size=5, labels=labels))),
                          one_call)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (10, rf"label 10 is not a class of this model; {re.escape(VALID_CLASSES)}"),
        (-1, r"label -1 is not a class"),
        ("x", r"label 'x' is not a class"),
        ("10", r"label '10' is not a class"),
        (True, r"label True is not a class"),
        (3.0, r"label 3\.0 is not a class"),
        ([0] * 19 + ["zz"], rf"labels\[19\]: label 'zz' is not a class of this model; {re.escape(VALID_CLASSES)}"),
        (np.array([0, 11] + [0] * 18), r"labels\[1\]: label 11 is not a class"),
        ([1, 2], r"one label or a list of 20 \(one per image\), got 2 labels"),
        (np.zeros((20, 1), np.int64), r"got an array of shape \[20, 1\]"),
    ],
    ids=["10", "-1", "x", "'10'", "True", "3.0", "a bad name in a list", "a bad index in an array", "too few",
         "2-D array"],
)
def test_a_label_the_model_does_not_have_is_refused_before_onnxruntime_runs(
    conditional: OnnxGenerator, monkeypatch: pytest.MonkeyPatch, labels, expected: str
) -> None:
    _without_onnxruntime(conditional, monkeypatch)
    with pytest.raises(ValueError, match=expected):
        conditional.generate(20, labels=labels)
    with pytest.raises(ValueError, match=expected):
        conditional.generate_batches(20, labels=labels)  # at the call, not at the first batch
    with pytest.raises(ValueError, match=expected):
        conditional.generate_raw(conditional.noise(20, seed=0), labels)


def test_an_unconditional_model_refuses_labels(onnx_generator: OnnxGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    _without_onnxruntime(onnx_generator, monkeypatch)
    expected = r"generator\.onnx is not class-conditional \(it has no 'labels' input\), so it takes no labels, got "
    with pytest.raises(ValueError, match=expected + "3; generate without labels"):
        onnx_generator.generate(4, labels=3)
    with pytest.raises(ValueError, match=expected + "'つ'"):
        onnx_generator.generate_batches(4, labels="つ")
    with pytest.raises(ValueError, match=expected + r"\[3, 3, 3, 3\]"):
        onnx_generator.generate_from_noise(onnx_generator.noise(4, seed=0), [3, 3, 3, 3])


def test_a_labels_input_without_class_metadata_is_a_clear_error(conditional_run: ExportedRun, tmp_path: Path) -> None:
    model = onnx.load(str(conditional_run.model))
    kept = [entry for entry in model.metadata_props if entry.key != "class_names"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "no-classes.onnx"))
    with pytest.raises(ModelError, match=r"no-classes\.onnx has a 'labels' input, but its metadata does not say what "
                                         r"the labels mean.*'class_names': None.*Re-export"):
        OnnxGenerator(tmp_path / "no-classes.onnx")


def test_generate_cli_makes_the_class_of_label(
    conditional_run: ExportedRun, conditional: OnnxGenerator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = conditional.generate(20, seed=7, labels=3)
    flags = ["--n", "20", "--seed", "7"]
    out, npy = tmp_path / "tsu.png", tmp_path / "tsu.npy"
    command = [sys.executable, "-m", "gan.generate", str(conditional_run.model), "--label", "つ", *flags]
    result = run_command([*command, "--out", str(out), "--npy", str(npy)], timeout=60)  # a real process, real argv
    assert "wrote 20 images of class 3 つ (tsu)" in result.stdout
    assert np.array_equal(np.load(npy), expected)
    with Image.open(out) as png:
        assert np.array_equal(np.asarray(png), tile(expected, fill=0))  # near-square: 5 columns x 4 rows
    for label in ("3", "tsu"):
        other = tmp_path / f"{label}.npy"
        argv = [str(conditional_run.model), "--label", label, *flags, "--out", str(tmp_path / f"{label}.png")]
        assert gan.generate.main([*argv, "--npy", str(other)]) == 0
        assert np.array_equal(np.load(other), expected)
    capsys.readouterr()


def test_generate_cli_without_label_draws_a_column_per_class(
    conditional_run: ExportedRun, conditional: OnnxGenerator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, npy = tmp_path / "grid.png", tmp_path / "images.npy"
    assert gan.generate.main([str(conditional_run.model), "--n", "25", "--out", str(out), "--npy", str(npy)]) == 0
    expected = conditional.generate(25, seed=0)
    assert np.array_equal(np.load(npy), expected)
    with Image.open(out) as png:
        assert np.array_equal(np.asarray(png), tile(expected, columns=10, fill=0))  # column c: class c
    assert "wrote 25 images of the 10 classes in turn, a column each" in capsys.readouterr().out
    # --columns still decides; fewer images than classes: as many columns as images.
    assert gan.generate.main([str(conditional_run.model), "--n", "25", "--columns", "5", "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert np.array_equal(np.asarray(png), tile(expected, columns=5, fill=0))
    assert gan.generate.main([str(conditional_run.model), "--n", "4", "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert np.array_equal(np.asarray(png), tile(expected[:4], columns=4, fill=0))


@pytest.mark.parametrize(
    ("label", "expected"),
    [("10", "--label 10: label '10' is not a class of this model"), ("x", "--label x: label 'x' is not a class")],
    ids=["10", "x"],
)
def test_generate_cli_refuses_a_label_the_model_does_not_have(
    conditional_run: ExportedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str, expected: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        gan.generate.main([str(conditional_run.model), "--label", label, "--out", str(tmp_path / "g.png")])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and VALID_CLASSES in error and "Traceback" not in error
    assert list(tmp_path.iterdir()) == []
