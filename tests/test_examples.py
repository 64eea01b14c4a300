"""examples/node and examples/web for real: Node.js + onnxruntime-node, headless Chromium + onnxruntime-web.

Both compare what the app produced with Python onnxruntime on the same noise. They need Node.js, Debian's
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
from helpers import ROOT, ExportedRun, run_command
from PIL import Image

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


def _node_generate(model: Path, noise: Path, out_dir: Path) -> subprocess.CompletedProcess:
    script = EXAMPLES / "node" / "generate.mjs"
    return run_command(["node", str(script), str(model), str(noise), str(out_dir)], timeout=120, check=False)


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


# --- the web page in headless Chromium ----------------------------------------------------------------------


@pytest.fixture()
def page_url(run: ExportedRun):
    """examples/web/serve.py on 127.0.0.1 with the fixture model; yields the page's URL."""
    server = subprocess.Popen(
        [sys.executable, "serve.py", "--model", str(run.model), "--port", "0"],
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
