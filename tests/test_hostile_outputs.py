"""Hostile arguments for the three commands that read models and write files: ``python -m gan.generate``,
``export.py`` and ``python -m gan.evaluate`` (both sub-commands).

Each case runs the command's ``main(argv)`` in this process on real files (the ``run`` fixture's exported model, a
small class-conditional one, and broken copies of them) and checks the answer a user gets: the exit status (2: a bad
argument, refused before any work; 1: a file whose content is unusable), a message that names the flag or the file,
no traceback, and no file left in the case's output folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import NAN_TENSORS, ROOT, ExportedRun, export_small_conditional_run, nan_onnx_model, nan_weights_run

import gan.evaluate
import gan.generate
from gan.artifacts import GENERATOR_FILE

LONG_NAME = "x" * 300  # longer than the 255 bytes a file name may have


def _export_main() -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location("export_cli", ROOT / "export.py")  # a script, not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


COMMANDS = {"generate": gan.generate.main, "export": _export_main(), "evaluate": gan.evaluate.main}


@pytest.fixture(scope="module")
def inputs(run: ExportedRun, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files a case may name: good ones, broken ones, and files or folders where the other kind belongs."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "file.txt").write_text("a file where a folder belongs\n")
    for name in ("folder.png", "folder.npy", "folder.json", "folder.onnx", "folder.safetensors"):
        (folder / name).mkdir()
    model_bytes = run.model.read_bytes()
    (folder / "truncated.onnx").write_bytes(model_bytes[: len(model_bytes) // 2])
    (folder / "text.onnx").write_text("not a model, only renamed\n")
    damaged_run = folder / "damaged-run"
    damaged_run.mkdir()
    for name in ("config.json", GENERATOR_FILE):
        data = (run.run_dir / name).read_bytes()
        (damaged_run / name).write_bytes(data if name == "config.json" else data[: len(data) // 3])
    return {
        "model": run.model,
        "conditional_model": export_small_conditional_run(tmp_path_factory).model,
        "run": run.run_dir,
        "data": shared_data,
        "in": folder,
        "file": folder / "file.txt",
        "nan_model": nan_onnx_model(run.model, folder / "nan.onnx"),
        "nan_run": nan_weights_run(run.run_dir, folder / "nan-run"),
        "damaged_run": damaged_run,
    }


# (command, argv, exit status, what stderr must name). "{name}" is a path of `inputs`; "{out}" the case's own
# empty output folder; "{long}" a file name too long for the file system. The evaluation cases point --data-dir at
# a folder without data, so that a case which wrongly passed the checks fails fast instead of computing metrics.
NO_DATA = ["--data-dir", "{out}/no-data"]
CASES = {
    # --- python -m gan.generate
    "generate: every bad number at once": (
        "generate", ["{model}", "--n", "0", "--seed", "-1", "--threads", "-1", "--columns", "0"], 2,
        ["--n must be at least 1, got 0", "--seed must be between 0 and 2**63 - 1", "--threads", "--columns"],
    ),
    "generate: a seed past 2**63 - 1": ("generate", ["{model}", "--seed", str(2**63)], 2, ["--seed"]),
    "generate: more threads than cores": ("generate", ["{model}", "--threads", "100000"], 2, ["--threads"]),
    "generate: more columns than images": ("generate", ["{model}", "--n", "4", "--columns", "5"], 2, ["--columns"]),
    "generate: more images than a grid, no --npy": ("generate", ["{model}", "--n", "10001"], 2, ["--n 10001", "--npy"]),
    "generate: --out not a .png": ("generate", ["{model}", "--out", "{out}/grid.jpg"], 2, ["--out", "grid.jpg"]),
    "generate: --npy not a .npy": ("generate", ["{model}", "--npy", "{out}/images"], 2, ["--npy", "images"]),
    "generate: --out under a file": ("generate", ["{model}", "--out", "{file}/grid.png"], 2, ["--out", "{file}"]),
    "generate: --out is a folder": ("generate", ["{model}", "--out", "{in}/folder.png"], 2, ["--out", "folder.png"]),
    "generate: --npy is a folder": ("generate", ["{model}", "--npy", "{in}/folder.npy"], 2, ["--npy", "folder.npy"]),
    "generate: --out name too long": ("generate", ["{model}", "--out", "{out}/{long}.png"], 2, ["--out", "too long"]),
    "generate: --npy name too long": ("generate", ["{model}", "--npy", "{out}/{long}.npy"], 2, ["--npy", "too long"]),
    "generate: missing model": ("generate", ["{in}/missing.onnx"], 2, ["MODEL", "missing.onnx does not exist"]),
    "generate: model is a folder": ("generate", ["{in}/folder.onnx"], 2, ["MODEL", "folder.onnx is a folder"]),
    "generate: model name too long": ("generate", ["{in}/{long}.onnx"], 2, ["MODEL", "too long"]),
    "generate: truncated model": ("generate", ["{in}/truncated.onnx"], 1, ["truncated.onnx is not a loadable"]),
    "generate: text file as model": ("generate", ["{in}/text.onnx"], 1, ["text.onnx is not a loadable ONNX"]),
    "generate: NaN model": ("generate", ["{nan_model}"], 1, ["nan.onnx produced NaN/inf", "diverged"]),
    "generate: --label for an unconditional model": (
        "generate", ["{model}", "--label", "つ", "--out", "{out}/g.png"], 2,
        ["--label つ: {model} is not class-conditional (it has no 'labels' input)", "generate without labels"],
    ),
    "generate: --label past the classes": (
        "generate", ["{conditional_model}", "--label", "10", "--out", "{out}/g.png"], 2,
        ["--label 10: label '10' is not a class of this model", "0 お (o)", "3 つ (tsu)", "9 を (wo)"],
    ),
    "generate: a negative --label": ("generate", ["{conditional_model}", "--label", "-1"], 2, ["--label -1: label"]),
    "generate: an unknown character and a bad --n": (
        "generate", ["{conditional_model}", "--label", "あ", "--n", "0", "--out", "{out}/g.png"], 2,
        ["--n must be at least 1, got 0", "--label あ: label 'あ' is not a class"],
    ),
    # --- export.py
    "export: opset too old": ("export", ["{run}", "--opset", "17", "--output", "{out}/m.onnx"], 2, ["--opset"]),
    "export: --output not a .onnx": ("export", ["{run}", "--output", "{out}/m.txt"], 2, ["--output", "m.txt"]),
    "export: RUN_DIR is a file": ("export", ["{file}"], 2, ["RUN_DIR {file} is not a folder (it is a file)"]),
    "export: RUN_DIR missing": ("export", ["{in}/no-run"], 2, ["RUN_DIR", "no-run is not a folder"]),
    "export: --runs-dir missing": ("export", ["--runs-dir", "{in}/no-runs"], 2, ["--runs-dir", "no-runs"]),
    "export: --output under a file": ("export", ["{run}", "--output", "{file}/m.onnx"], 2, ["--output", "{file}"]),
    "export: --output is a folder": ("export", ["{run}", "--output", "{in}/folder.onnx"], 2, ["--output", "folder"]),
    "export: --output name too long": ("export", ["{run}", "--output", "{out}/{long}.onnx"], 2, ["--output", "long"]),
    "export: NaN weights": (
        "export", ["{nan_run}", "--output", "{out}/m.onnx"], 1,
        ["nan-run/generator.safetensors: 3 tensors hold NaN/inf", *NAN_TENSORS, "diverged"],
    ),
    "export: truncated weights": (
        "export", ["{damaged_run}", "--output", "{out}/m.onnx"], 1,
        ["damaged-run/generator.safetensors is not a readable safetensors file"],
    ),
    # --- python -m gan.evaluate
    "evaluate: every bad number at once": (
        "evaluate", ["{model}", "--n", "0", "--k", "0", "--kid-subsets", "0", "--batch-size", "0", "--seed", "-1",
                     "--json", "{out}/e.json", *NO_DATA], 2,
        ["--n must be", "--k must be", "--kid-subsets must be", "--batch-size must be", "--seed must be"],
    ),
    "evaluate: --n not above --k": (
        "evaluate", ["{model}", "--n", "3", "--k", "3", "--json", "{out}/e.json", *NO_DATA], 2,
        ["--n must exceed --k (3)"],
    ),
    "evaluate: counts too large": (
        "evaluate", ["{model}", "--n", "100001", "--kid-subsets", "1001", "--json", "{out}/e.json", *NO_DATA], 2,
        ["--n must be at most 100000", "--kid-subsets must be at most 1000"],
    ),
    "evaluate: unknown device": (
        "evaluate", ["{model}", "--device", "gpu", "--json", "{out}/e.json", *NO_DATA], 2, ["--device 'gpu'"],
    ),
    "evaluate: --json under a file": ("evaluate", ["{model}", "--json", "{file}/e.json", *NO_DATA], 2, ["--json"]),
    "evaluate: --json is a folder": (
        "evaluate", ["{model}", "--json", "{in}/folder.json", *NO_DATA], 2, ["--json", "folder.json is a folder"],
    ),
    "evaluate: --json name too long": (
        "evaluate", ["{model}", "--json", "{out}/{long}.json", *NO_DATA], 2, ["--json", "too long"],
    ),
    "evaluate: missing model": (
        "evaluate", ["{in}/missing.onnx", *NO_DATA], 2, ["RUN_DIR|MODEL.onnx", "missing.onnx does not exist"],
    ),
    "evaluate: missing run folder": ("evaluate", ["{in}/no-run", *NO_DATA], 2, ["no-run does not exist"]),
    "evaluate: a file as the run folder": ("evaluate", ["{file}", *NO_DATA], 2, ["file.txt is a file"]),
    "evaluate: model is a folder": ("evaluate", ["{in}/folder.onnx", *NO_DATA], 2, ["folder.onnx is a folder"]),
    "evaluate: missing classifier": (
        "evaluate", ["{model}", "--classifier", "{in}/none.safetensors", "--json", "{out}/e.json", *NO_DATA], 2,
        ["--classifier", "none.safetensors does not exist"],
    ),
    "evaluate: truncated model": (
        "evaluate", ["{in}/truncated.onnx", "--json", "{out}/e.json", *NO_DATA], 1, ["truncated.onnx is not a"],
    ),
    "evaluate: text file as model": (
        "evaluate", ["{in}/text.onnx", "--json", "{out}/e.json", *NO_DATA], 1, ["text.onnx is not a loadable"],
    ),
    "evaluate: NaN model": (  # found when the samples are made, after the real images are loaded (~5 s)
        "evaluate", ["{nan_model}", "--n", "10", "--kid-subsets", "1", "--json", "{out}/e.json",
                     "--data-dir", "{data}", "--split", "test"], 1, ["nan.onnx produced NaN/inf"],
    ),
    # --- python -m gan.evaluate train-classifier
    "train-classifier: every bad number at once": (
        "evaluate", ["train-classifier", "--lr", "nan", "--weight-decay", "inf", "--seed", "-1", "--width", "100000",
                     "--epochs", "0", "--out", "{out}/c.safetensors", *NO_DATA], 2,
        ["--lr must be positive and finite, got nan", "--weight-decay", "--seed", "--width", "--epochs"],
    ),
    "train-classifier: nothing held out": (
        "evaluate", ["train-classifier", "--holdout-fraction", "0.00001", "--out", "{out}/c.safetensors", *NO_DATA],
        2, ["--holdout-fraction 1e-05 holds out 0 of the 10000 'test' images"],
    ),
    "train-classifier: --out not .safetensors": (
        "evaluate", ["train-classifier", "--out", "{out}/c.json", *NO_DATA], 2, ["--out", "c.json"],
    ),
    "train-classifier: --out under a file": (
        "evaluate", ["train-classifier", "--out", "{file}/c.safetensors", *NO_DATA], 2, ["--out", "{file}"],
    ),
    "train-classifier: --out is a folder": (
        "evaluate", ["train-classifier", "--out", "{in}/folder.safetensors", *NO_DATA], 2, ["--out", "is a folder"],
    ),
    "train-classifier: unknown device": (
        "evaluate", ["train-classifier", "--device", "cuda:99", "--out", "{out}/c.safetensors", *NO_DATA], 2,
        ["--device 'cuda:99'"],
    ),
}


def _exit_status(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exited:  # argparse and exit_with_problems leave this way
        return exited.code


@pytest.mark.parametrize("case", CASES)
def test_hostile_arguments_get_a_clear_answer(
    case: str, inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, argv, status, names = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    places = {**{key: str(path) for key, path in inputs.items()}, "out": str(out), "long": LONG_NAME}
    assert _exit_status(COMMANDS[command], [arg.format(**places) for arg in argv]) == status
    error = capsys.readouterr().err
    assert "Traceback" not in error
    for name in names:
        assert name.format(**places) in error
    if status == 1:
        assert len(error.strip().splitlines()) == 1, error  # one line: the problem and what to do
    assert not [path for path in out.rglob("*") if path.is_file()]  # nothing written, nothing half-written
