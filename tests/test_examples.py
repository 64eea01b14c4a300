"""examples/node and examples/web for real: Node.js + onnxruntime-node, headless Chromium + onnxruntime-web.

Both compare what the app produced with Python onnxruntime on the same noise (and, for the small class-conditional
model of ``helpers.export_small_conditional_run``, the same labels). They need Node.js, Debian's
Chromium and ``npm ci`` in both example folders: ``bash examples/install.sh`` installs all of it (.ci/run
calls it).
"""


from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, ExportedRun, export_small_conditional_run, run_command
from PIL import Image

from gan.data import CLASS_CHARACTERS, CLASS_NAMES
from gan.noise import sample_labels
from gan.onnx_generator import OnnxGenerator
from gan.pictures import tile

EXAMPLES = ROOT / "examples"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Node.js and headless Chromium start in seconds each, and the page loads onnxruntime-web's WASM: the slow tier.
pytestmark = pytest.mark.slow

INSTALL_HINT = "run `bash examples/install.sh` (apt chromium, npm ci in examples/node and examples/web)"

requires_node = pytest.mark.skipif(shutil.which("node") is None, reason=f"Node.js is not installed; {INSTALL_HINT}")
requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"Chromium is not at {CHROMIUM}; {INSTALL_HINT}"
)


def _require_packages(example: str, package: str) -> None:
    # Node and Chromium may be absent (skip), but with Node present the npm packages must be there: fail loudly.
    if not (EXAMPLES / example / "node_modules" / package).is_dir():
        pytest.fail(f"examples/{example}/node_modules/{package} is missing; {INSTALL_HINT}")


# --- Node.js ------------------------------------------------------------------------------------------------


def _node_generate(model: Path, noise: Path, out_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    script = EXAMPLES / "node" / "generate.mjs"
    return run_command(["node", str(script), str(model), str(noise), str(out_dir), *flags], timeout=120, check=False)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> ExportedRun:
    return export_small_conditional_run(tmp_path_factory)


@requires_node
def test_node_script_output_equals_python_onnxruntime(
    run: ExportedRun, onnx_generator: OnnxGenerator, tmp_path: Path
) -> None:
    _require_packages("node", "onnxruntime-node")
    noise = np.random.default_rng(123).standard_normal((12, onnx_generator.latent_dim), dtype=np.float32)
    np.save(tmp_path / "noise.npy", noise)
    result = _node_generate(run.model, tmp_path / "noise.npy", tmp_path / "out")
    assert result.returncode == 0, result.stderr

    raw = np.load(tmp_path / "out" / "images.npy")
    assert raw.dtype == np.float32 and raw.shape == (12, 1, 28, 28)
    assert np.abs(raw - onnx_generator.generate_raw(noise)).max() <= 1e-4
    assert raw.std() > 0.02  # trained outputs, not a constant

    expected = onnx_generator.generate_from_noise(noise)
    pngs = np.stack([np.asarray(Image.open(tmp_path / "out" / f"image_{i:03d}.png")) for i in range(12)])
    assert pngs.dtype == np.uint8 and np.abs(pngs.astype(int) - expected.astype(int)).max() <= 1
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert np.abs(np.asarray(grid).astype(int) - tile(expected, fill=0).astype(int)).max() <= 1


@requires_node
def test_node_script_rejects_noise_of_the_wrong_size(run: ExportedRun, tmp_path: Path) -> None:
    _require_packages("node", "onnxruntime-node")
    np.save(tmp_path / "noise.npy", np.zeros((3, 64), np.float32))
    result = _node_generate(run.model, tmp_path / "noise.npy", tmp_path / "out")
    assert result.returncode == 1
    assert "has shape [3,64], expected [N, 100]" in result.stderr
    assert not (tmp_path / "out").exists()


@requires_node
def test_node_script_makes_the_class_of_label_with_a_conditional_model(
    conditional_run: ExportedRun, tmp_path: Path
) -> None:
    _require_packages("node", "onnxruntime-node")
    conditional = OnnxGenerator(conditional_run.model)
    noise = np.random.default_rng(7).standard_normal((12, conditional.latent_dim), dtype=np.float32)
    np.save(tmp_path / "noise.npy", noise)
    for label in ("つ", "tsu"):
        result = _node_generate(conditional_run.model, tmp_path / "noise.npy", tmp_path / label, "--label", label)
        assert result.returncode == 0, result.stderr
        assert "wrote 12 images of class 3 つ (tsu)" in result.stdout
        assert np.array_equal(np.load(tmp_path / label / "labels.npy"), np.full(12, 3))
        raw = np.load(tmp_path / label / "images.npy")
        assert np.abs(raw - conditional.generate_raw(noise, 3)).max() <= 1e-4
    # The class reached the model: the same noise as the classes in turn draws other images.
    assert np.abs(raw - conditional.generate_raw(noise)).max() > 0.1

    # Without --label: the classes in turn (gan.noise.sample_labels), one column per class in grid.png.
    result = _node_generate(conditional_run.model, tmp_path / "noise.npy", tmp_path / "all")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "all" / "labels.npy"), sample_labels(12, 10))
    assert np.abs(np.load(tmp_path / "all" / "images.npy") - conditional.generate_raw(noise)).max() <= 1e-4
    expected = conditional.generate_from_noise(noise)
    with Image.open(tmp_path / "all" / "grid.png") as grid:
        assert np.abs(np.asarray(grid).astype(int) - tile(expected, columns=10, fill=0).astype(int)).max() <= 1


@requires_node
def test_node_script_refuses_a_label_the_model_cannot_take(
    run: ExportedRun, conditional_run: ExportedRun, tmp_path: Path
) -> None:
    _require_packages("node", "onnxruntime-node")
    np.save(tmp_path / "noise16.npy", np.zeros((3, 16), np.float32))
    result = _node_generate(conditional_run.model, tmp_path / "noise16.npy", tmp_path / "out", "--label", "10")
    assert result.returncode == 2
    assert "--label 10 is not a class of this model; its 10 classes are 0 お (o), 1 き (ki)" in result.stderr
    assert "9 を (wo)" in result.stderr

    np.save(tmp_path / "noise100.npy", np.zeros((3, 100), np.float32))
    result = _node_generate(run.model, tmp_path / "noise100.npy", tmp_path / "out", "--label", "つ")
    assert result.returncode == 2
    assert f"--label つ: {run.model} is not class-conditional (it has no 'labels' input)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# --- the web page in headless Chromium ----------------------------------------------------------------------

WINDOWS = "1000x800,390x844"  # a laptop's window and a phone's


def _serve(model: Path):
    """examples/web/serve.py on 127.0.0.1 with ``model``; yields the page's URL."""
    server = subprocess.Popen(
        [sys.executable, "serve.py", "--model", str(model), "--port", "0"],
        cwd=EXAMPLES / "web",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = server.stdout.readline()  # "serving http://127.0.0.1:PORT/"
        if not first_line.startswith("serving http://127.0.0.1:"):
            server.kill()
            pytest.fail(f"serve.py did not start: {first_line}{server.communicate(timeout=10)[1]}")
        yield first_line.split()[1]
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture()
def page_url(run: ExportedRun):
    """The page with the fixture model."""
    yield from _serve(run.model)


@pytest.fixture()
def conditional_page_url(conditional_run: ExportedRun):
    """The page with the small class-conditional model."""
    yield from _serve(conditional_run.model)


def _check_page(url: str, *flags: str) -> dict:
    """check_page.mjs's report on the page at ``url``, after the checks that every page must pass."""
    _require_packages("web", "onnxruntime-web")
    _require_packages("web", "playwright-core")
    command = ["node", str(EXAMPLES / "web" / "check_page.mjs"), url, *flags]
    page = json.loads(run_command(command, timeout=180, env={"CHROMIUM_PATH": CHROMIUM}).stdout)
    assert "driverError" not in page, page.get("driverError")
    assert page["consoleErrors"] == [] and page["pageErrors"] == [] and page["failedRequests"] == []
    assert page["phase"] == "generated" and page["generations"] == 2, page["status"]
    return page


def _assert_fits(page: dict) -> None:
    """At each window size the page scrolls only downwards: no horizontal scroll bar, the grid scaled to fit."""
    assert [fit["viewport"]["width"] for fit in page["fit"]] == [1000, 390]
    for fit in page["fit"]:
        assert fit["scrollWidth"] <= fit["innerWidth"] == fit["viewport"]["width"], fit
        assert 0 < fit["canvasWidth"] <= fit["innerWidth"], fit


def _canvas_pixels(page: dict) -> np.ndarray:
    canvas = page["canvas"]
    return np.array(canvas["gray"], dtype=np.uint8).reshape(canvas["height"], canvas["width"])


@requires_node
@requires_chromium
def test_web_page_draws_generated_characters_without_console_errors(
    page_url: str, onnx_generator: OnnxGenerator, tmp_path: Path
) -> None:
    _require_packages("web", "onnxruntime-web")
    _require_packages("web", "playwright-core")
    script = EXAMPLES / "web" / "check_page.mjs"
    command = ["node", str(script), page_url, "--screenshot", str(tmp_path / "page.png")]
    result = run_command(command, timeout=180, env={"CHROMIUM_PATH": CHROMIUM})
    page = json.loads(result.stdout)
    assert "driverError" not in page, page.get("driverError")
    assert page["consoleErrors"] == [] and page["pageErrors"] == [] and page["failedRequests"] == []
    assert page["phase"] == "generated", page["status"]
    # The first batch on load, a fresh one from the button.
    assert page["generations"] == 2 and page["seed"] != page["firstSeed"]

    layout, canvas = page["layout"], page["canvas"]
    count, latent_dim = layout["count"], page["latentDim"]
    assert latent_dim == onnx_generator.latent_dim
    pixels = np.array(canvas["gray"], dtype=np.uint8).reshape(canvas["height"], canvas["width"])
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50  # not blank, not one flat colour

    # The canvas shows exactly what Python onnxruntime makes of the page's noise (WASM vs native: <= 1 level).
    noise = np.array(page["noise"], dtype=np.float32).reshape(count, latent_dim)
    assert 0.8 < noise.std() < 1.2 and abs(noise.mean()) < 0.1  # standard normal noise
    expected = tile(onnx_generator.generate_from_noise(noise), columns=layout["columns"], pad=layout["pad"], fill=0)
    assert pixels.shape == expected.shape
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1
    assert (tmp_path / "page.png").stat().st_size > 10_000


@requires_node
@requires_chromium
def test_web_page_fits_the_window_and_has_no_class_buttons_for_an_unconditional_model(page_url: str) -> None:
    page = _check_page(page_url, "--viewports", WINDOWS)
    _assert_fits(page)
    assert page["classesShown"] is False and page["classButtons"] == []
    assert page["labels"] is None and page["classNames"] is None


@requires_node
@requires_chromium
def test_web_page_class_button_draws_that_class(conditional_page_url: str, conditional_run: ExportedRun) -> None:
    page = _check_page(conditional_page_url, "--label", "つ", "--viewports", WINDOWS)
    conditional = OnnxGenerator(conditional_run.model)
    # Ten character buttons (each with its romanized name) after "all"; つ pressed.
    assert page["classesShown"] is True
    texts = [button["text"] for button in page["classButtons"]]
    assert texts == ["all", *(c + r for c, r in zip(CLASS_CHARACTERS, CLASS_NAMES, strict=True))]
    assert [button["pressed"] for button in page["classButtons"]] == ["false"] * 4 + ["true"] + ["false"] * 6
    assert page["classNames"] == list(CLASS_CHARACTERS)

    # The first batch went through the classes in turn; the click fed class 3 to the model's labels input.
    count = page["layout"]["count"]
    assert page["firstLabels"] == sample_labels(count, 10).tolist()
    assert page["label"] == 3 and page["labels"] == [3] * count
    assert "32 characters of つ (tsu)" in page["status"]

    # The canvas shows what Python onnxruntime makes of the page's noise with class 3 (WASM vs native: <= 1 level),
    # not what the same noise gives for the classes in turn.
    noise = np.array(page["noise"], dtype=np.float32).reshape(count, conditional.latent_dim)
    pixels = _canvas_pixels(page)
    columns, pad = page["layout"]["columns"], page["layout"]["pad"]
    expected = tile(conditional.generate_from_noise(noise, 3), columns=columns, pad=pad, fill=0)
    assert pixels.shape == expected.shape and np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1
    other = tile(conditional.generate_from_noise(noise), columns=columns, pad=pad, fill=0)
    assert np.abs(pixels.astype(int) - other.astype(int)).max() > 50
    _assert_fits(page)
