"""What a run keeps for its users across a SIGKILL and a resume: one W&B run holding every step once (read back from
the offline files), the generator as W&B model artifact versions, and the best checkpoint (lowest FID), exportable.

One run is trained, killed with SIGKILL after its step-20 checkpoint and resumed to step 40 (the `interrupted` fixture:
real processes, offline W&B, evaluations every 10 steps); the tests read what it left behind.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from helpers import ROOT, run_command, train_command
from safetensors.torch import load_file
from wandb_reader import history_rows, read_records

from gan.artifacts import BEST_DIR, CONFIG_FILE, GENERATOR_FILE, read_generator_metadata
from gan.checkpointing import CHECKPOINTS, STATE_JSON, STATE_TENSORS
from gan.export import MODEL_FILE, REPORT_FILE
from gan.pictures import METRICS_CSV
from gan.tracking import SUPERSEDED, model_artifact_name

pytestmark = pytest.mark.slow  # real training runs
STEPS, KILL_AFTER, EVAL_EVERY, SAMPLE_EVERY = 40, 20, 10, 5


def _flags(data_dir: Path, output_dir: Path, run_name: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--split", "test", "--no-download", "--output-dir", str(output_dir),
            "--run-name", run_name, "--max-steps", str(STEPS), "--checkpoint-every", str(KILL_AFTER),
            "--eval-every", str(EVAL_EVERY), "--eval-samples", "300", "--log-every", "1",
            "--sample-every", str(SAMPLE_EVERY)]


def _offline_env(home: Path) -> dict[str, str | None]:
    return {"WANDB_API_KEY": None, "WANDB_MODE": None, "HOME": str(home)}  # not logged in: W&B falls back to offline


@pytest.fixture(scope="module")
def interrupted(shared_data, tmp_path_factory):
    """(run folder, stdout of the resumed launch, the killed launch's offline W&B folder as it was left)."""
    out = tmp_path_factory.mktemp("interrupted")
    run_dir = out / "killed"
    env = _offline_env(out)
    process_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    process = subprocess.Popen(train_command(*_flags(shared_data, out, "killed")), cwd=ROOT, env=process_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / CHECKPOINTS / f"step_{KILL_AFTER}").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint"
        time.sleep(0.05)
    process.kill()  # SIGKILL: nothing of the process's own shutdown runs
    process.wait(timeout=60)
    (killed_launch,) = (run_dir / "wandb").glob("offline-run-*")
    best_before = read_generator_metadata(run_dir / BEST_DIR / GENERATOR_FILE)
    resumed = run_command(train_command(*_flags(shared_data, out, "killed"), "--resume", "latest"), env=env)
    return run_dir, resumed.stdout, killed_launch, best_before


def _eval_rows(run_dir: Path) -> dict[int, float]:
    with open(run_dir / METRICS_CSV) as f:
        return {int(row["step"]): float(row["eval/fid"]) for row in csv.DictReader(f) if row.get("eval/fid")}


def _artifacts(records) -> list:
    return [record.artifact for record in records if record.WhichOneof("record_type") == "artifact"]


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()  # W&B's manifest digest


def test_one_wandb_run_holds_every_step_once_after_a_kill_and_a_resume(interrupted):
    run_dir, stdout, killed_launch, _ = interrupted
    run_id = json.loads((run_dir / CONFIG_FILE).read_text())["wandb_run_id"]
    (newest,) = (run_dir / "wandb").glob("offline-run-*")  # the only one left to sync
    assert newest.name.endswith(f"-{run_id}") and newest != killed_launch
    # the killed launch's folder (same run id) was moved aside: syncing it after the newest would replace its history
    assert (run_dir / "wandb" / SUPERSEDED / killed_launch.name).is_dir() and killed_launch.name.endswith(run_id)
    assert f"wandb sync {newest}" in stdout  # the exact command, naming this folder
    rows = history_rows(read_records(newest / f"run-{run_id}.wandb"))
    steps = [row["step"] for row in rows if "d_loss" in row]
    assert steps == list(range(1, STEPS + 1))  # steps 1..N, each once, in order
    assert [row["_step"] for row in rows if "eval/fid" in row] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    grids = [row["_step"] for row in rows if "samples/fixed_noise/_type" in row]
    assert grids == list(range(SAMPLE_EVERY, STEPS + 1, SAMPLE_EVERY))
    # the values logged again are those of the checkpoint's history (metrics.csv), not new ones
    with open(run_dir / METRICS_CSV) as f:
        saved = {int(row["step"]): float(row["d_loss"]) for row in csv.DictReader(f)}
    assert all(abs(row["d_loss"] - saved[row["step"]]) < 1e-6 for row in rows if "d_loss" in row)


def test_the_best_generator_is_kept_across_the_interruption(interrupted):
    run_dir, stdout, _, best_before = interrupted
    fids = _eval_rows(run_dir)
    assert sorted(fids) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))  # the evaluations of both launches
    best_step = min(fids, key=fids.get)
    metadata = read_generator_metadata(run_dir / BEST_DIR / GENERATOR_FILE)
    assert metadata["step"] == best_step and metadata["selected_by"] == "fid"
    assert metadata["metrics"]["fid"] == pytest.approx(fids[best_step], rel=1e-6)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    assert config["best"] == {"step": best_step, "fid": pytest.approx(fids[best_step], rel=1e-6)}
    assert f"the best, FID {fids[best_step]:.2f} at step {best_step}" in stdout
    # the step-20 checkpoint holds the best of steps 10 and 20, weights included, which the resume restored
    checkpoint = run_dir / CHECKPOINTS / f"step_{KILL_AFTER}"
    early = {step: fid for step, fid in fids.items() if step <= KILL_AFTER}
    record = json.loads((checkpoint / STATE_JSON).read_text())["best"]
    assert record["step"] == min(early, key=early.get) == best_before["step"]
    if best_step <= KILL_AFTER:  # then the file is the checkpoint's, written again by the resumed launch
        kept = load_file(str(checkpoint / STATE_TENSORS))
        best = load_file(str(run_dir / BEST_DIR / GENERATOR_FILE))
        assert all(torch.equal(kept[f"best.{name}"], value) for name, value in best.items())


def test_the_generator_is_logged_as_model_artifact_versions(interrupted):
    run_dir, _, _, _ = interrupted
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    run_id, best_step = config["wandb_run_id"], config["best"]["step"]
    (newest,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    artifacts = _artifacts(read_records(newest / f"run-{run_id}.wandb"))
    assert {a.name for a in artifacts} == {model_artifact_name(run_id)} and {a.type for a in artifacts} == {"model"}
    final = artifacts[-1]  # logged last: W&B gives it `latest`
    assert {"latest", f"step-{STEPS}"} <= set(final.aliases)
    (entry,) = final.manifest.contents
    assert entry.path == GENERATOR_FILE and entry.digest == _md5(run_dir / GENERATOR_FILE)
    assert Path(entry.local_path) == (run_dir / GENERATOR_FILE).resolve()  # uploaded from the run folder on sync
    assert json.loads(final.metadata)["step"] == STEPS
    if best_step == STEPS:
        assert len(artifacts) == 1 and "best" in final.aliases
    else:  # the best of the evaluations as a version of its own, before the final one
        best, final = artifacts
        assert {"best", f"step-{best_step}"} <= set(best.aliases) and "best" not in final.aliases
        (entry,) = best.manifest.contents
        assert entry.path == GENERATOR_FILE and entry.digest == _md5(run_dir / BEST_DIR / GENERATOR_FILE)
        assert json.loads(best.metadata)["fid"] == pytest.approx(config["best"]["fid"])


def test_export_of_the_best_weights_is_a_new_artifact_version(interrupted, tmp_path):
    run_dir, _, _, _ = interrupted
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    run_id, best_step = config["wandb_run_id"], config["best"]["step"]
    before = set((run_dir / "wandb").glob("offline-run-*"))
    result = run_command([sys.executable, "export.py", str(run_dir), "--weights", "best"],
                         env=_offline_env(tmp_path))
    metadata = {p.key: p.value for p in onnx.load(run_dir / MODEL_FILE).metadata_props}
    assert metadata["weights"] == "best" and metadata["step"] == str(best_step)
    report = json.loads((run_dir / REPORT_FILE).read_text())
    assert report["weights"] == "best" and report["step"] == best_step and report["passed"]
    # the export logs from a W&B run of its own (a second offline folder with the training run's id would replace
    # the training history on sync); its artifact is a version of the training run's model artifact
    (export_launch,) = set((run_dir / "wandb").glob("offline-run-*")) - before
    assert not export_launch.name.endswith(run_id)
    assert f"wandb sync {export_launch}" in result.stdout
    records = read_records(next(export_launch.glob("run-*.wandb")))
    (artifact,) = _artifacts(records)
    assert artifact.name == model_artifact_name(run_id) and artifact.type == "model"
    assert {"latest", "best", f"step-{best_step}"} <= set(artifact.aliases)
    files = {entry.path: entry for entry in artifact.manifest.contents}
    assert set(files) == {GENERATOR_FILE, MODEL_FILE, REPORT_FILE}
    assert files[GENERATOR_FILE].digest == _md5(run_dir / BEST_DIR / GENERATOR_FILE)
    assert files[MODEL_FILE].digest == _md5(run_dir / MODEL_FILE)
    assert not any(name for name in files if "checkpoint" in name or "wandb" in name)


def test_best_weights_of_a_run_without_evaluations_is_one_clear_error(run, tmp_path):
    result = run_command([sys.executable, "export.py", str(run.run_dir), "--weights", "best", "--output",
                          str(tmp_path / "g.onnx")], check=False)
    assert result.returncode == 1 and "best/generator.safetensors does not exist" in result.stderr
    assert "--eval-every" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "g.onnx").exists()
