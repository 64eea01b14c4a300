"""gan/hub.py (publishing a run) and OnnxGenerator.from_pretrained (loading it back from the Hugging Face cache).

Nothing here reaches the network: huggingface_hub's calls that would are replaced in the tests that push, every test
runs with huggingface_hub's offline switch on (an unreplaced call fails instead of connecting), and the downloads are
served from a cache folder laid out as huggingface_hub lays it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import numpy as np
import pytest
from helpers import ROOT, copy_run, exported_small_run, write_evaluation
from huggingface_hub import HfApi
from huggingface_hub.errors import OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.hf_api import CommitInfo
from safetensors.torch import load_file, save_file

import gan.hub
from gan.card import CARD_FILE, SAMPLES_FILE, write_card
from gan.export import ExportConfig, run_export
from gan.hub import HubError, hub_files, hub_problems, push_to_hub, repo_id_problem, repo_name, stage
from gan.onnx_generator import ModelError, OnnxGenerator

PUBLISHED = ["README.md", "card_samples.png", "config.json", "export_report.json", "generator.fp16.onnx",
             "generator.onnx", "generator.safetensors"]
REPO_ID = "alice/kmnist-dcgan"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every request (OfflineModeIsEnabled), so a call the test did not replace cannot reach
    the network."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A copy of the small exported run (with generator.fp16.onnx), its card written, and what a training run also
    leaves in its folder: none of it may be published."""
    run = copy_run(exported_small_run(tmp_path_factory, 0), tmp_path / "card-unconditional")
    for extra in ("checkpoints/step_7/model.safetensors", "checkpoints/step_7/trainer_state.json",
                  "wandb/run-1/files/output.log", "generator_trained.safetensors", "metrics.csv", "losses.png"):
        (run / extra).parent.mkdir(parents=True, exist_ok=True)
        (run / extra).write_bytes(b"not for the Hub")
    write_card(run)
    return run


def test_stage_holds_exactly_the_published_files(run_dir: Path, tmp_path: Path) -> None:
    assert [name for _, name in hub_files(run_dir)] == PUBLISHED
    folder = tmp_path / "staged"
    assert stage(run_dir, folder) == PUBLISHED
    assert sorted(path.name for path in folder.iterdir()) == PUBLISHED  # no folders: no checkpoints/, no wandb/
    for name in PUBLISHED:
        assert (folder / name).read_bytes() == (run_dir / name).read_bytes()

    evaluation = write_evaluation(run_dir)
    assert stage(run_dir, tmp_path / "with-evaluation") == sorted([*PUBLISHED, "evaluation.json"])
    # an evaluation of other weights than the exported ones is not this model's: not published
    (run_dir / "evaluation.json").write_text(json.dumps({**evaluation, "weights": "best"}))
    assert stage(run_dir, tmp_path / "other-evaluation") == PUBLISHED


def test_best_weights_are_published_as_generator_safetensors(run_dir: Path, tmp_path: Path) -> None:
    report = json.loads((run_dir / "export_report.json").read_text())
    (run_dir / "export_report.json").write_text(json.dumps({**report, "weights": "best"}))
    with pytest.raises(HubError, match=r"best/generator.safetensors does not exist.*exported best weights"):
        hub_files(run_dir)

    best = run_dir / "best" / "generator.safetensors"
    best.parent.mkdir()
    save_file(load_file(str(run_dir / "generator.safetensors")), str(best), metadata={"step": "5"})
    stage(run_dir, tmp_path / "staged")
    assert (tmp_path / "staged" / "generator.safetensors").read_bytes() == best.read_bytes()
    assert best.read_bytes() != (run_dir / "generator.safetensors").read_bytes()


def test_an_unexported_or_card_less_run_is_not_published(run_dir: Path) -> None:
    (run_dir / CARD_FILE).unlink()
    with pytest.raises(HubError, match=r"README.md does not exist.*python -m gan.card"):
        hub_files(run_dir)
    (run_dir / "generator.onnx").unlink()
    with pytest.raises(HubError, match=r"generator.onnx does not exist.*python export.py"):
        hub_files(run_dir)


class FakeHub:
    """Stands in for the HfApi methods gan.hub calls, recording each call and what the staged folder held."""

    def __init__(self, upload_error: Exception | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.staged: dict[str, bytes] = {}
        self.upload_error = upload_error

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        fake = self

        def whoami(api: HfApi, *args, **kwargs) -> dict:
            fake.calls.append(("whoami", args, kwargs))
            return {"name": "alice", "type": "user"}

        def create_repo(api: HfApi, *args, **kwargs) -> str:
            fake.calls.append(("create_repo", args, kwargs))
            return f"https://huggingface.co/{args[0]}"

        def upload_folder(api: HfApi, *args, **kwargs) -> CommitInfo:
            fake.calls.append(("upload_folder", args, kwargs))
            folder = Path(kwargs["folder_path"])
            fake.staged = {path.name: path.read_bytes() for path in folder.iterdir()}
            if fake.upload_error is not None:
                raise fake.upload_error
            return CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT}",
                              commit_message=kwargs["commit_message"], commit_description="", oid=COMMIT)

        monkeypatch.setattr(HfApi, "whoami", whoami)
        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
        return self


def test_push_to_hub_makes_one_commit_of_exactly_the_staged_files(run_dir: Path, monkeypatch) -> None:
    hub = FakeHub().install(monkeypatch)
    url = push_to_hub(run_dir, private=True)

    repo = "alice/card-unconditional"  # whoami's name / the run folder's name
    assert url == f"https://huggingface.co/{repo}/commit/{COMMIT}"
    assert [name for name, _, _ in hub.calls] == ["whoami", "create_repo", "upload_folder"]
    assert hub.calls[1][1:] == ((repo,), {"private": True, "exist_ok": True, "repo_type": "model"})
    _, args, kwargs = hub.calls[2]
    assert args == () and set(kwargs) == {"repo_id", "folder_path", "commit_message", "repo_type"}
    assert (kwargs["repo_id"], kwargs["repo_type"]) == (repo, "model")
    assert kwargs["commit_message"] == "Upload kmnist-gan generator from run card-unconditional (step 7)"
    assert sorted(hub.staged) == PUBLISHED
    assert f'from_pretrained("{repo}")' in hub.staged[CARD_FILE].decode()  # the card names the repo it is in
    assert hub.staged[CARD_FILE] == (run_dir / CARD_FILE).read_bytes()
    assert not Path(kwargs["folder_path"]).exists()  # the staging folder is gone
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_push_to_a_named_repo_asks_no_user_name(run_dir: Path, monkeypatch) -> None:
    hub = FakeHub().install(monkeypatch)
    push_to_hub(run_dir, REPO_ID)
    assert [name for name, _, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1:] == ((REPO_ID,), {"private": False, "exist_ok": True, "repo_type": "model"})


def test_push_without_a_token_says_how_to_log_in(run_dir: Path, monkeypatch) -> None:
    hub = FakeHub().install(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    (run_dir / CARD_FILE).unlink()
    with pytest.raises(HubError) as error:
        push_to_hub(run_dir, REPO_ID)
    message = str(error.value)
    assert "no Hugging Face token" in message and "hf auth login" in message and "HF_TOKEN" in message
    assert "\n" not in message and str(run_dir / CARD_FILE) in message and str(run_dir / SAMPLES_FILE) in message
    assert hub.calls == []  # nothing was asked of the Hub
    assert f'from_pretrained("{REPO_ID}")' in (run_dir / CARD_FILE).read_text(encoding="utf-8")  # written locally


def test_push_of_an_unexported_run_creates_no_repo(run_dir: Path, monkeypatch) -> None:
    hub = FakeHub().install(monkeypatch)
    (run_dir / "generator.onnx").unlink()
    with pytest.raises(HubError, match=r"the run is not exported. Export it first: python export.py"):
        push_to_hub(run_dir, REPO_ID)
    assert hub.calls == []


@pytest.mark.parametrize(
    "failure",
    [
        httpx2.ConnectError("[Errno 111] Connection refused"),
        httpx2.ReadTimeout("The read operation timed out"),
        OfflineModeIsEnabled("Cannot reach https://huggingface.co/api: offline mode is enabled."),
    ],
    ids=["connect", "timeout", "offline"],
)
def test_a_failed_upload_is_one_line_naming_the_repo(run_dir: Path, monkeypatch, failure: Exception) -> None:
    FakeHub(upload_error=failure).install(monkeypatch)
    with pytest.raises(HubError) as error:
        push_to_hub(run_dir, REPO_ID)
    message = str(error.value)
    assert message.startswith(f"cannot publish to the Hub repo {REPO_ID}: {type(failure).__name__}: ")
    assert str(failure).splitlines()[0] in message and "\n" not in message


def test_an_unreplaced_hub_call_fails_offline_as_a_hub_error(run_dir: Path, monkeypatch) -> None:
    """The real HfApi.create_repo under the autouse offline switch: what a user without a network gets."""
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    with pytest.raises(HubError, match=rf"^cannot publish to the Hub repo {REPO_ID}: OfflineModeIsEnabled: "):
        push_to_hub(run_dir, REPO_ID)


@pytest.mark.parametrize(
    ("repo_id", "problem"),
    [
        ("alice/kmnist-dcgan", None),
        ("alice", "must be USER/NAME"),
        ("a/b/c", "must be USER/NAME"),
        ("alice/bad name", "is not a valid Hub repo id"),
        ("alice/a--b", "is not a valid Hub repo id"),
        ("alice/x.git", "is not a valid Hub repo id"),
    ],
)
def test_repo_id_problem(repo_id: str, problem: str | None) -> None:
    found = repo_id_problem(repo_id)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize(
    ("run_name", "expected"),
    [("2026-12-02_03-09", "2026-12-02_03-09"), ("my run: #1", "my-run-1"), ("..a--b..", "a-b"),
     ("x" * 120, "x" * 96), ("run.git", "run"), ("***", "kmnist-gan")],
)
def test_repo_name_follows_the_hub_rules(run_name: str, expected: str) -> None:
    assert repo_name(run_name) == expected
    assert repo_id_problem(f"alice/{expected}") is None


def test_hub_problems_at_parse_time(monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    problems = hub_problems(push_to_hub=True, hub_model_id="nobody", private=False, need_token=True)
    assert len(problems) == 2
    assert problems[0].startswith("--hub-model-id must be USER/NAME") and "hf auth login" in problems[1]
    assert hub_problems(False, None, private=True) == [
        "--private only applies to the repo --push-to-hub creates; add --push-to-hub or drop --private"]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    assert hub_problems(True, REPO_ID, True) == [] and hub_problems(False, REPO_ID, False) == []
    assert gan.hub.LOGIN_ADVICE in problems[1]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # export.py: checked after the local files
    assert hub_problems(True, REPO_ID, False, need_token=False) == []


# --- the commands that publish: export.py --push-to-hub and train_ddp.py --push-to-hub


def test_export_push_to_hub_exports_writes_the_card_and_uploads_once(run_dir: Path, monkeypatch, capsys) -> None:
    hub = FakeHub().install(monkeypatch)
    (run_dir / CARD_FILE).unlink()
    run_export(ExportConfig(run_dir=str(run_dir), push_to_hub=True, hub_model_id=REPO_ID, private=True))
    assert [name for name, _, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1:] == ((REPO_ID,), {"private": True, "exist_ok": True, "repo_type": "model"})
    assert sorted(hub.staged) == [name for name in PUBLISHED if name != "generator.fp16.onnx"]  # no --fp16 this time
    assert hub.staged["generator.onnx"] == (run_dir / "generator.onnx").read_bytes()  # the model just exported
    assert f"pushed to https://huggingface.co/{REPO_ID}/commit/{COMMIT}" in capsys.readouterr().out


@pytest.mark.slow  # the real export.py process
def test_export_push_without_a_token_writes_the_local_files_then_fails_in_one_line(tmp_path: Path,
                                                                                     tmp_path_factory) -> None:
    run = copy_run(exported_small_run(tmp_path_factory, 0), tmp_path / "run")
    for name in ("generator.onnx", "export_report.json"):
        (run / name).unlink()
    env = {**os.environ, "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, "export.py", str(run), "--push-to-hub"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "no Hugging Face token" in line and "hf auth login" in line and "Traceback" not in result.stderr
    for name in ("generator.onnx", "export_report.json", CARD_FILE, SAMPLES_FILE):
        assert (run / name).is_file()


def test_train_push_to_hub_publishes_at_the_end_and_names_the_retry(run_dir: Path, monkeypatch) -> None:
    from gan.config import TrainConfig
    from gan.trainer import PublishError, publish

    hub = FakeHub().install(monkeypatch)
    publish(run_dir, TrainConfig(push_to_hub=True, hub_model_id=REPO_ID))
    assert [name for name, _, _ in hub.calls] == ["create_repo", "upload_folder"]
    failing = FakeHub(upload_error=httpx2.ConnectError("connection refused")).install(monkeypatch)
    with pytest.raises(PublishError) as caught:
        publish(run_dir, TrainConfig(push_to_hub=True, hub_model_id=REPO_ID))
    assert [name for name, _, _ in failing.calls] == ["create_repo", "upload_folder"]
    message = str(caught.value)
    assert "connection refused" in message and "\n" not in message
    assert f"python export.py {run_dir} --push-to-hub --hub-model-id {REPO_ID}" in message


def test_train_push_to_hub_without_a_token_is_refused_before_training(monkeypatch, capsys) -> None:
    from gan.config import parse_config

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(SystemExit) as exited:
        parse_config(["--push-to-hub", "--hub-model-id", REPO_ID])
    assert exited.value.code == 2
    assert "--push-to-hub needs a Hugging Face token" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    config = parse_config(["--push-to-hub", "--hub-model-id", REPO_ID, "--private"])
    assert (config.push_to_hub, config.hub_model_id, config.private) == (True, REPO_ID, True)


# --- OnnxGenerator.from_pretrained: the published model, from the Hugging Face cache


def hub_cache(tmp_path: Path, model: Path, repo_id: str = REPO_ID) -> Path:
    """A Hugging Face cache folder holding ``model`` as ``repo_id``'s generator.onnx at revision main, laid out as
    hf_hub_download leaves it: the file in blobs/ under its SHA-256, a snapshot symlink to it, refs/main naming the
    commit."""
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(model.read_bytes())
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "generator.onnx").symlink_to(Path("../..") / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_from_pretrained_reads_the_cache_without_the_network(run_dir: Path, tmp_path: Path) -> None:
    cache = hub_cache(tmp_path, run_dir / "generator.onnx")
    generator = OnnxGenerator.from_pretrained(REPO_ID, cache_dir=cache, local_files_only=True, intra_op_threads=1)
    assert generator.model_path == cache / "models--alice--kmnist-dcgan" / "snapshots" / COMMIT / "generator.onnx"
    local = OnnxGenerator(run_dir / "generator.onnx")
    assert generator.latent_dim == local.latent_dim == 16 and generator.metadata == local.metadata
    np.testing.assert_array_equal(generator.generate(32, seed=3), local.generate(32, seed=3))


# The user's side in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT when imported.
FROM_PRETRAINED = """
import sys
import numpy as np
from gan.onnx_generator import OnnxGenerator
assert "huggingface_hub" not in sys.modules  # plain inference does not import it
generator = OnnxGenerator.from_pretrained(sys.argv[1], cache_dir=sys.argv[2])
np.save(sys.argv[3], generator.generate(32, seed=3))
print(generator.model_path)
"""


@pytest.mark.parametrize(
    "network",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["HF_HUB_OFFLINE", "unreachable-endpoint"],
)
def test_from_pretrained_falls_back_to_the_cache_offline(run_dir: Path, tmp_path: Path, network: dict) -> None:
    cache = hub_cache(tmp_path, run_dir / "generator.onnx")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", **network}
    env.pop("HF_TOKEN", None)
    out = tmp_path / "images.npy"
    result = subprocess.run([sys.executable, "-c", FROM_PRETRAINED, REPO_ID, str(cache), str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"snapshots/{COMMIT}/generator.onnx")
    np.testing.assert_array_equal(np.load(out), OnnxGenerator(run_dir / "generator.onnx").generate(32, seed=3))


def test_from_pretrained_names_a_repo_missing_from_the_cache(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        OnnxGenerator.from_pretrained("alice/no-such-model", cache_dir=tmp_path / "empty", local_files_only=True)
    message = str(error.value)
    assert "'generator.onnx' of the Hub model repo 'alice/no-such-model'" in message
    assert "is not in the Hugging Face cache" in message and "local_files_only" in message

    with pytest.raises(ModelError, match="is not a Hub repo id"):
        OnnxGenerator.from_pretrained("a/b/c", cache_dir=tmp_path / "empty", local_files_only=True)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RepositoryNotFoundError, "the Hub has no model repo 'alice/kmnist-dcgan' that this token may read"),
        (RemoteEntryNotFoundError, "the Hub model repo 'alice/kmnist-dcgan' has no file 'generator.onnx'"),
    ],
    ids=["no-repo", "no-file"],
)
def test_from_pretrained_explains_what_the_hub_answered(monkeypatch, error: type, expected: str) -> None:
    """What hf_hub_download raises when the Hub answers 404 (the repo, or the file in it), as a ModelError."""
    request = httpx2.Request("HEAD", f"https://huggingface.co/{REPO_ID}/resolve/main/generator.onnx")

    def answered_404(*args, **kwargs):
        raise error("404 Client Error.", response=httpx2.Response(404, request=request))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", answered_404)
    with pytest.raises(ModelError, match=expected):
        OnnxGenerator.from_pretrained(REPO_ID)
