"""export.py and gan/export.py on a generator really trained by train_ddp.py; files are read back from disk.

The ``run`` fixture (conftest.py) trains a few steps on the real test split and runs ``python export.py RUN --fp16``,
once per pytest session; test_onnx_generator.py and test_examples.py share it. A small class-conditional generator
(``helpers.export_small_conditional_run``, exported by the same CLI) serves the conditional tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import (
    CONDITIONAL_RUN_NAME,
    NAN_TENSORS,
    SMALL_LATENT_DIM,
    ExportedRun,
    export_small_conditional_run,
    nan_weights_run,
    run_command,
)
from helpers import EXPORT_RUN_NAME as RUN_NAME
from helpers import EXPORT_TRAIN_STEPS as TRAIN_STEPS
from onnx.external_data_helper import uses_external_data

from gan.artifacts import CONFIG_FILE, GENERATOR_FILE, ArtifactError, load_generator, read_config
from gan.data import CLASS_CHARACTERS, CLASS_NAMES
from gan.export import (
    FAILED_REPORT_FILE,
    MIN_OPSET,
    MODEL_FILE,
    REPORT_FILE,
    TOLERANCE,
    VERIFY_BATCHES,
    ExportConfig,
    ExportError,
    fp16_path,
    newest_run,
    parse_export_config,
    run_export,
    verify_onnx,
)
from gan.models import IMAGE_SHAPE, Generator


def _fixed_noise(batch: int, latent_dim: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, latent_dim, generator=torch.Generator().manual_seed(seed))


# --- the file and its interface -----------------------------------------------------------------------------


def test_fixture_generator_was_trained(run: ExportedRun) -> None:
    assert read_config(run.run_dir)["final_step"] == TRAIN_STEPS
    generator, _ = load_generator(run.run_dir)
    # BatchNorm running statistics start at mean 0 / var 1; training forward passes moved them.
    assert generator.main[1].running_mean.abs().max() > 1e-4
    assert generator.main[1].num_batches_tracked.item() >= TRAIN_STEPS


def test_export_writes_one_self_contained_file_with_the_documented_interface(run: ExportedRun) -> None:
    onnx_files = sorted(p for p in run.run_dir.iterdir() if "onnx" in p.name)
    assert onnx_files == sorted([run.model, run.fp16_model])
    model = onnx.load(str(run.model), load_external_data=False)
    assert not any(uses_external_data(tensor) for tensor in model.graph.initializer)
    assert len(model.graph.initializer) > 0

    (z,), (images,) = model.graph.input, model.graph.output
    assert z.name == "z" and images.name == "images"
    assert z.type.tensor_type.elem_type == images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(z) == ["batch", read_config(run.run_dir)["latent_dim"]]
    assert dims(images) == ["batch", *IMAGE_SHAPE]
    assert min(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= MIN_OPSET
    # The exported graph is the plain eval-mode generator: BatchNorm folded away, no training-mode ops left.
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}


def test_metadata_reads_back_from_the_file(run: ExportedRun) -> None:
    config = read_config(run.run_dir)
    session = ort.InferenceSession(str(run.model), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["latent_dim"] == str(config["latent_dim"])
    image_shape = (metadata["image_channels"], metadata["image_height"], metadata["image_width"])
    assert image_shape == tuple(str(n) for n in IMAGE_SHAPE)
    assert json.loads(metadata["output_range"]) == [-1, 1]
    assert metadata["dataset"] == "Kuzushiji-MNIST" and metadata["dataset_split"] == "test"
    assert metadata["run_name"] == RUN_NAME
    assert metadata["step"] == str(TRAIN_STEPS)
    assert metadata["ema_weights"] == ("true" if config["generator_weights"] == "ema" else "false")
    assert metadata["torch_version"] == torch.__version__
    assert metadata["precision"] == "fp32"
    assert (metadata["input_name"], metadata["output_name"]) == ("z", "images")


# --- verification -------------------------------------------------------------------------------------------


def test_report_and_table_hold_the_verification_numbers(run: ExportedRun) -> None:
    summary = json.loads((run.run_dir / REPORT_FILE).read_text())
    assert summary["passed"] is True
    assert [Path(r["model"]) for r in summary["reports"]] == [run.model, run.fp16_model]
    for report in summary["reports"]:
        assert report["checker"].startswith("passed")
        assert report["failures"] == []
        assert [entry["batch"] for entry in report["batches"]] == list(VERIFY_BATCHES)
        for entry in report["batches"]:
            assert entry["shape"] == [entry["batch"], *IMAGE_SHAPE]
            assert entry["dtype"] == "float32"
            assert 0 <= entry["max_abs_diff"] <= TOLERANCE[report["precision"]]
            # The printed table carries the same number.
            assert f"{entry['max_abs_diff']:.2e}" in run.export_stdout
    assert [report["tolerance"] for report in summary["reports"]] == [TOLERANCE["fp32"], TOLERANCE["fp16"]]
    assert {1, 1000} <= set(VERIFY_BATCHES)  # the documented promise: one file serves a single image and a big batch
    assert "generator.fp16.onnx (fp16)" in run.export_stdout


@pytest.mark.parametrize("batch", [1, 1000])
def test_one_file_serves_batch_1_and_1000_like_pytorch(run: ExportedRun, batch: int) -> None:
    generator, config = load_generator(run.run_dir)
    z = _fixed_noise(batch, config["latent_dim"])
    session = ort.InferenceSession(str(run.model), providers=["CPUExecutionProvider"])
    (images,) = session.run(["images"], {"z": z.numpy()})
    with torch.no_grad():
        expected = generator(z).numpy()
    assert images.shape == (batch, *IMAGE_SHAPE) and images.dtype == np.float32
    assert np.abs(images - expected).max() <= TOLERANCE["fp32"]
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.02  # trained outputs, not the near-constant ones of the initial weights


def test_fp16_model_has_fp16_weights_fp32_interface_and_measured_error(run: ExportedRun) -> None:
    model = onnx.load(str(run.fp16_model))
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert run.fp16_model.stat().st_size < 0.6 * run.model.stat().st_size

    generator, config = load_generator(run.run_dir)
    z = _fixed_noise(256, config["latent_dim"])
    session = ort.InferenceSession(str(run.fp16_model), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["precision"] == "fp16"
    (images,) = session.run(["images"], {"z": z.numpy()})
    with torch.no_grad():
        error = np.abs(images - generator(z).numpy()).max()
    assert 0 < error <= TOLERANCE["fp16"]  # > 0: the arithmetic really is half precision


def test_verification_reports_a_model_that_differs_from_pytorch(run: ExportedRun) -> None:
    _, config = load_generator(run.run_dir)
    other = Generator(config["latent_dim"], config["base_width"]).eval()  # untrained: other weights
    report = verify_onnx(run.model, other)
    assert report["passed"] is False
    assert len(report["failures"]) == len(VERIFY_BATCHES)
    assert "max abs diff" in report["failures"][0] and f"exceeds {TOLERANCE['fp32']:g}" in report["failures"][0]


FP16_FILE = fp16_path(Path(MODEL_FILE)).name
EXPORT_FILES = (MODEL_FILE, FP16_FILE, REPORT_FILE)


def _copy_exported_run(run: ExportedRun, run_dir: Path) -> dict[str, str]:
    """Copy the run's files with its export; returns the SHA-256 of each exported file."""
    run_dir.mkdir()
    for name in (CONFIG_FILE, GENERATOR_FILE, *EXPORT_FILES):
        shutil.copy(run.run_dir / name, run_dir / name)
    return _hashes(run_dir)


def _hashes(run_dir: Path) -> dict[str, str]:
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest() for name in EXPORT_FILES}


def test_failed_verification_leaves_the_earlier_export_as_it_was(
    run: ExportedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    before = _copy_exported_run(run, run_dir)
    monkeypatch.setitem(TOLERANCE, "fp32", -1.0)  # an impossible bound: every fp32 comparison fails
    with pytest.raises(ExportError, match=r"verification failed .*export_report\.failed\.json.*no file was replaced"):
        run_export(ExportConfig(run_dir=str(run_dir), fp16=True))
    assert _hashes(run_dir) == before  # both models and the good report, byte for byte
    failed = json.loads((run_dir / FAILED_REPORT_FILE).read_text())
    assert failed["passed"] is False and "batch 1000: max abs diff" in failed["reports"][0]["failures"][-1]
    assert [Path(report["model"]) for report in failed["reports"]] == [run_dir / MODEL_FILE, run_dir / FP16_FILE]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*EXPORT_FILES, CONFIG_FILE, GENERATOR_FILE,
                                                                 FAILED_REPORT_FILE])  # no temporary files

    monkeypatch.undo()  # a passing export replaces the files and retires the failure's report
    run_export(ExportConfig(run_dir=str(run_dir)))
    assert json.loads((run_dir / REPORT_FILE).read_text())["passed"] is True
    assert not (run_dir / FAILED_REPORT_FILE).exists()


def test_export_without_verification_still_replaces_the_file_atomically(run: ExportedRun, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _copy_exported_run(run, run_dir)
    old_bytes = (run_dir / MODEL_FILE).read_bytes()
    os.link(run_dir / MODEL_FILE, tmp_path / "old.onnx")  # a second name for the old file's inode
    run_export(ExportConfig(run_dir=str(run_dir), verify=False))
    # Written under a temporary name and renamed: the old inode was never written to, the new file is another.
    assert (tmp_path / "old.onnx").read_bytes() == old_bytes
    assert not os.path.samefile(run_dir / MODEL_FILE, tmp_path / "old.onnx")
    assert onnx.load(str(run_dir / MODEL_FILE)).graph.initializer
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_nan_weights_fail_before_export_and_keep_the_earlier_files(run: ExportedRun, tmp_path: Path) -> None:
    run_dir = nan_weights_run(run.run_dir, tmp_path / "diverged")
    before = _hashes(run_dir)
    result = run_command([sys.executable, "export.py", str(run_dir), "--fp16"], timeout=120, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"{run_dir / GENERATOR_FILE}: 3 tensors hold NaN/inf ({', '.join(NAN_TENSORS)})" in result.stderr
    assert "diverged" in result.stderr and "retrain" in result.stderr
    assert _hashes(run_dir) == before
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp") or p.name == FAILED_REPORT_FILE]


def test_exporting_at_an_older_opset_verifies(run: ExportedRun, tmp_path: Path) -> None:
    output = tmp_path / "opset18.onnx"
    summary = run_export(ExportConfig(run_dir=str(run.run_dir), output=str(output), opset=18))
    assert summary["passed"] and summary["reports"][0]["opset"] == 18
    assert onnx.load(str(output)).opset_import[0].version == 18


# --- errors a user can act on -------------------------------------------------------------------------------


def test_corrupt_onnx_file_is_a_clear_error(run: ExportedRun, tmp_path: Path) -> None:
    broken = tmp_path / MODEL_FILE
    data = run.model.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated mid-weights, as by a full disk or a broken copy
    generator, _ = load_generator(run.run_dir)
    with pytest.raises(ExportError) as caught:
        verify_onnx(broken, generator)
    message = str(caught.value)
    assert str(broken) in message and "check_model" in message and "re-export" in message


@pytest.mark.slow  # the real export.py process
def test_corrupt_weights_file_fails_the_cli_with_a_clear_message(run: ExportedRun, tmp_path: Path) -> None:
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    shutil.copy(run.run_dir / CONFIG_FILE, run_dir / CONFIG_FILE)
    weights = (run.run_dir / GENERATOR_FILE).read_bytes()
    (run_dir / GENERATOR_FILE).write_bytes(weights[: len(weights) // 3])
    result = run_command([sys.executable, "export.py", str(run_dir)], timeout=120, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{run_dir / GENERATOR_FILE} is not a readable safetensors file" in result.stderr
    assert not (run_dir / MODEL_FILE).exists()


def test_missing_run_dir_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"does-not-exist is not a folder.*python export.py runs/<run-name>"):
        run_export(ExportConfig(run_dir=str(tmp_path / "does-not-exist")))
    assert not (tmp_path / "does-not-exist").exists()  # the checks do not create the folder they refuse
    with pytest.raises(ArtifactError, match=r"config\.json does not exist"):
        run_export(ExportConfig(run_dir=str(tmp_path)))


def test_config_without_provenance_names_the_missing_key(run: ExportedRun, tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    shutil.copy(run.run_dir / GENERATOR_FILE, run_dir / GENERATOR_FILE)
    config = read_config(run.run_dir)
    del config["final_step"]
    (run_dir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"config\.json of run 'export-fixture' has no 'final_step'"):
        run_export(ExportConfig(run_dir=str(run_dir), verify=False))


def test_invalid_flags_are_reported_together(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_export_config(["--opset", str(MIN_OPSET - 1), "--output", "model.txt"])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert f"--opset must be between {MIN_OPSET}" in error and "--output must name a .onnx file" in error

    (tmp_path / "run").write_text("a file, not a run folder")
    (tmp_path / "folder.onnx").mkdir()
    for argv, expected in [
        ([str(tmp_path / "run")], f"RUN_DIR {tmp_path / 'run'} is not a folder (it is a file)"),
        (["--runs-dir", str(tmp_path / "none")], f"--runs-dir {tmp_path / 'none'} is not a folder"),
        (["--runs-dir", str(tmp_path), "--output", str(tmp_path / "folder.onnx")], "folder.onnx is a folder"),
    ]:
        with pytest.raises(SystemExit) as caught:
            parse_export_config(argv)
        assert caught.value.code == 2 and expected in capsys.readouterr().err


def test_flags_map_onto_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the paths are checked: runs/ and runs/a must be folders
    Path("runs/a").mkdir(parents=True)
    config = parse_export_config(["runs/a", "--output", "x.onnx", "--opset", "19", "--fp16", "--no-verify"])
    assert config == ExportConfig(run_dir="runs/a", output="x.onnx", opset=19, fp16=True, verify=False)
    assert parse_export_config([]) == ExportConfig()


# --- the default run ----------------------------------------------------------------------------------------


def test_default_run_is_the_newest_finished_one(run: ExportedRun, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for age, name in enumerate(["newest", "older", "oldest"]):
        shutil.copytree(run.run_dir, runs / name)
        stamp = time.time() - 100 * age
        os.utime(runs / name / GENERATOR_FILE, (stamp, stamp))
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / CONFIG_FILE).write_text("{}")  # still training: no generator yet
    assert newest_run(runs) == runs / "newest"

    with pytest.raises(ExportError, match=r"holds no finished run"):
        newest_run(runs / "unfinished")
    with pytest.raises(ExportError, match=r"nowhere/ does not exist.*python export.py RUN_DIR"):
        newest_run(tmp_path / "nowhere")

    for name in ("newest", "older", "oldest"):
        (runs / name / MODEL_FILE).unlink()
    summary = run_export(ExportConfig(runs_dir=str(runs), verify=False))
    assert summary["models"] == [str(runs / "newest" / MODEL_FILE)]
    assert (runs / "newest" / MODEL_FILE).is_file() and not (runs / "older" / MODEL_FILE).exists()


# --- a class-conditional generator (helpers.export_small_conditional_run: export.py --fp16 on a small one) ----------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> ExportedRun:
    return export_small_conditional_run(tmp_path_factory)


def _metadata(model: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def test_conditional_model_takes_labels_and_names_its_classes(conditional_run: ExportedRun) -> None:
    for model, precision in [(conditional_run.model, "fp32"), (conditional_run.fp16_model, "fp16")]:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
        assert inputs == [("z", "tensor(float)", ["batch", SMALL_LATENT_DIM]), ("labels", "tensor(int64)", ["batch"])]
        assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
            ("images", "tensor(float)", ["batch", *IMAGE_SHAPE])
        ]
        metadata = _metadata(model)
        assert metadata["num_classes"] == "10" and metadata["precision"] == precision
        assert json.loads(metadata["class_names"]) == list(CLASS_CHARACTERS)  # お き す つ な は ま や れ を
        assert json.loads(metadata["class_names_romanized"]) == list(CLASS_NAMES)
        assert metadata["run_name"] == CONDITIONAL_RUN_NAME


def test_unconditional_model_keeps_its_one_input_and_no_class_metadata(run: ExportedRun) -> None:
    for model in (run.model, run.fp16_model):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["z"]
        assert not {"num_classes", "class_names", "class_names_romanized"} & set(_metadata(model))


def test_conditional_verification_compares_every_class(conditional_run: ExportedRun) -> None:
    summary = json.loads((conditional_run.run_dir / REPORT_FILE).read_text())
    assert summary["passed"] is True
    for report in summary["reports"]:
        assert [entry["batch"] for entry in report["batches"]] == list(VERIFY_BATCHES)
        for entry in report["batches"]:
            assert 0 <= entry["max_abs_diff"] <= TOLERANCE[report["precision"]]
            # gan.noise.sample_labels: batch 1 is class 0, batch 7 classes 0-6, from 10 images on every class.
            assert entry["classes"] == list(range(min(entry["batch"], 10)))
        assert report["input"][1] == {"name": "labels", "dtype": "tensor(int64)", "shape": ["batch"]}


@pytest.mark.parametrize("batch", [1, 1000])
def test_conditional_model_serves_any_labels_like_pytorch(conditional_run: ExportedRun, batch: int) -> None:
    generator, config = load_generator(conditional_run.run_dir)
    z = _fixed_noise(batch, config["latent_dim"])
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(conditional_run.model), providers=["CPUExecutionProvider"])
    (images,) = session.run(["images"], {"z": z.numpy(), "labels": labels.numpy()})
    with torch.no_grad():
        expected = generator(z, labels).numpy()
    assert images.shape == (batch, *IMAGE_SHAPE) and np.abs(images - expected).max() <= TOLERANCE["fp32"]
    (fp16_images,) = ort.InferenceSession(str(conditional_run.fp16_model), providers=["CPUExecutionProvider"]).run(
        ["images"], {"z": z.numpy(), "labels": labels.numpy()}
    )
    assert 0 < np.abs(fp16_images - expected).max() <= TOLERANCE["fp16"]


def test_verification_notices_a_model_whose_labels_mean_other_classes(conditional_run: ExportedRun) -> None:
    generator, _ = load_generator(conditional_run.run_dir)
    with torch.no_grad():  # the same weights, the label embedding's rows shifted by one class
        generator.label_embedding.weight.copy_(generator.label_embedding.weight.roll(1, dims=0))
    report = verify_onnx(conditional_run.model, generator)
    assert report["passed"] is False
    # Batch 1 is class 0 alone, whose image changes too; every batch differs.
    assert len(report["failures"]) == len(VERIFY_BATCHES) and "max abs diff" in report["failures"][-1]
