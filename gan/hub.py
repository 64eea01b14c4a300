"""Publishing an exported run to the Hugging Face Hub: the model, its weights, its records and its card, in one commit.

What is published (:func:`hub_files`): ``generator.onnx`` (and ``generator.fp16.onnx``), the exported weights as
``generator.safetensors``, ``config.json``, ``export_report.json``, ``evaluation.json`` when there is one, and the
card (``README.md``, ``card_samples.png``; see :mod:`gan.card`). Never checkpoints or tracker files: they are large
and record the training, not the model. ``OnnxGenerator.from_pretrained(repo_id)`` loads the result back.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError

try:
    from huggingface_hub.errors import HTTPError  # httpx's (huggingface_hub >= 1.0)
except ImportError:  # requests' errors, which are OSErrors
    HTTPError = OSError
from huggingface_hub.utils import validate_repo_id

from gan.artifacts import CONFIG_FILE, EVALUATION_FILE, GENERATOR_FILE, generator_path
from gan.card import (
    CARD_FILE,
    SAMPLES_FILE,
    CardError,
    exported_weights,
    exported_which,
    fp16_exported,
    measures,
    read_json,
    write_card,
)
from gan.export import MODEL_FILE, REPORT_FILE, fp16_path

REPO_TYPE = "model"
MAX_REPO_NAME = 96  # the Hub's limit on a repo name (huggingface_hub.utils.validate_repo_id)
LOGIN_ADVICE = "log in with `hf auth login` (older huggingface_hub: `huggingface-cli login`) or set HF_TOKEN"


class HubError(RuntimeError):
    """Publishing failed: no token, a bad repo id, a missing file or a network/Hub error; one line saying what to do."""


def repo_id_problem(repo_id: str) -> str | None:
    """What is wrong with ``repo_id`` as a --hub-model-id (``USER/NAME``, the Hub's characters), or None."""
    if repo_id.count("/") != 1:
        return f"must be USER/NAME (a user or organisation and a repo name), got {repo_id!r}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return f"is not a valid Hub repo id: {error}"
    return None


def hub_problems(push_to_hub: bool, hub_model_id: str | None, private: bool, need_token: bool = False) -> list[str]:
    """Every problem with the publishing flags (--push-to-hub, --hub-model-id, --private), as flag-named sentences,
    found at parse time: a malformed repo id, --private without --push-to-hub and, with ``need_token`` (training:
    so that a long run does not end in a refused upload), no token to push with. export.py checks the token only
    after it has written the local files."""
    found = []
    problem = repo_id_problem(hub_model_id) if hub_model_id is not None else None
    if problem:
        found.append(f"--hub-model-id {problem}")
    if private and not push_to_hub:
        found.append("--private only applies to the repo --push-to-hub creates; add --push-to-hub or drop --private")
    if push_to_hub and need_token and not huggingface_hub.get_token():
        found.append(f"--push-to-hub needs a Hugging Face token and none was found: {LOGIN_ADVICE}")
    return found


def repo_name(run_name: str) -> str:
    """``run_name`` made a valid Hub repo name: letters, digits, '-', '_' and '.', no '--' or '..', at most 96
    characters, not starting or ending with '-' or '.', not ending with '.git'."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name)
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name))
    name = name[:MAX_REPO_NAME].strip("-.").removesuffix(".git").strip("-.")
    return name or "kmnist-gan"


# ------------------------------------------------------------------------------------------------------------
# The files
# ------------------------------------------------------------------------------------------------------------


def hub_files(run_dir: Path) -> list[tuple[Path, str]]:
    """(file in the run folder, name in the repo) of everything published; a :class:`HubError` names a file that
    must be there and is not.

    The weights are those that were exported (export_report.json's "weights"): with "best",
    ``best/generator.safetensors`` is published as ``generator.safetensors``, beside the model it became.
    """
    run_dir = Path(run_dir)
    try:
        report = read_json(run_dir / REPORT_FILE, f"python export.py {run_dir}")
        which = exported_which(run_dir, report)
        evaluation = read_json(run_dir / EVALUATION_FILE, f"python -m gan.evaluate {run_dir}")
    except CardError as error:
        raise HubError(str(error)) from None
    required = [
        (run_dir / MODEL_FILE, MODEL_FILE, f"export the run first: python export.py {run_dir}"),
        (generator_path(run_dir, which), GENERATOR_FILE, f"it holds the exported {which} weights; restore it or "
                                                         f"export the final weights"),
        (run_dir / CONFIG_FILE, CONFIG_FILE, "the run folder is damaged"),
        (run_dir / CARD_FILE, CARD_FILE, f"write the card first: python -m gan.card {run_dir}"),
        (run_dir / SAMPLES_FILE, SAMPLES_FILE, f"write the card first: python -m gan.card {run_dir}"),
    ]
    for path, _, advice in required:
        if not path.is_file():
            raise HubError(f"{path} does not exist, so the run cannot be published: {advice}")
    optional = [(run_dir / REPORT_FILE, REPORT_FILE)]
    if measures(evaluation, which):
        optional.append((run_dir / EVALUATION_FILE, EVALUATION_FILE))  # not another model's numbers
    if fp16_exported(run_dir, report):
        optional.append((fp16_path(run_dir / MODEL_FILE), fp16_path(Path(MODEL_FILE)).name))
    files = [(path, name) for path, name, _ in required] + [(path, name) for path, name in optional if path.is_file()]
    return sorted(files, key=lambda file: file[1])


def stage(run_dir: Path, folder: Path) -> list[str]:
    """Hard-link (or, across file systems, copy) :func:`hub_files` into ``folder`` under their repo names; returns
    the names. ``upload_folder`` then sends exactly these files, whatever else the run folder holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for source, name in hub_files(run_dir):
        target = folder / name
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)  # no copy of the model's bytes; upload_folder only reads them
        except OSError:
            shutil.copy2(source, target)
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------------------------
# Publishing
# ------------------------------------------------------------------------------------------------------------


def network_failure(repo_id: str | None, error: Exception) -> HubError:
    """A huggingface_hub/network error as one line naming the repo and the cause."""
    cause = (str(error).strip().splitlines() or [""])[0] or "no message"
    where = f"the Hub repo {repo_id}" if repo_id else "the Hub"
    return HubError(f"cannot publish to {where}: {type(error).__name__}: {cause}. Check the network, the repo id and "
                    f"that your token may write to it, then push again")


# What huggingface_hub 2.4 raises for a network or Hub failure: httpx2's HTTPError (ConnectError, TimeoutException,
# ...; HfHubHTTPError is one too), OSError (OfflineModeIsEnabled under HF_HUB_OFFLINE=1, HfHubHTTPError), and
# ValueError/RuntimeError from a failed LFS or Xet upload.
NETWORK_ERRORS = (HTTPError, OSError, TimeoutError, ValueError, RuntimeError)


def default_repo_id(api: HfApi, run_dir: Path) -> str:
    """``<your user name>/<run folder name>``, the name made valid for the Hub."""
    return f"{api.whoami()['name']}/{repo_name(Path(run_dir).name)}"


def commit_message(run_dir: Path) -> str:
    """'Upload kmnist-gan generator from run <name> (step N)': N is the exported weights' step."""
    config = read_json(Path(run_dir) / CONFIG_FILE, "python train_ddp.py") or {}
    report = read_json(Path(run_dir) / REPORT_FILE, f"python export.py {run_dir}")
    step = exported_weights(Path(run_dir), report, config).step
    name = config.get("run_name") or Path(run_dir).name
    return f"Upload kmnist-gan generator from run {name} (step {'?' if step is None else step})"


def local_card(run_dir: Path, repo_id: str | None) -> Path:
    """:func:`gan.card.write_card`, its error a :class:`HubError`: publishing fails with one kind of error."""
    try:
        return write_card(run_dir, repo_id)
    except CardError as error:
        raise HubError(str(error)) from None


def push_to_hub(run_dir: Path, repo_id: str | None = None, private: bool = False, token: str | None = None) -> str:
    """Publish the exported run in ``run_dir`` to the Hub model repo ``repo_id`` (default: your user name / the
    run's name), creating it if needed, in one commit; returns the commit's URL.

    The card is written first (with ``repo_id`` in its usage snippets): that also proves the run is exported before
    anything is created online, and leaves the local files complete whatever happens there. A :class:`HubError`
    (one line) for a bad repo id, a run that is not exported, no token, or a network/Hub failure.
    """
    run_dir = Path(run_dir)
    if repo_id is not None and (problem := repo_id_problem(repo_id)):
        raise HubError(f"repo id {problem}")
    card = local_card(run_dir, repo_id)
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError(f"no Hugging Face token, so nothing was uploaded: {LOGIN_ADVICE}, then push again. The local "
                       f"files were written ({card}, {run_dir / SAMPLES_FILE}).")
    api = HfApi(token=token)
    named = repo_id is not None
    try:
        repo_id = repo_id or default_repo_id(api, run_dir)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=REPO_TYPE)
    except NETWORK_ERRORS as error:
        raise network_failure(repo_id, error) from error
    if not named:  # the snippets can name the repo only now
        local_card(run_dir, repo_id)
    message = commit_message(run_dir)
    with tempfile.TemporaryDirectory(prefix=".hub-staging-", dir=run_dir) as folder:  # beside: hard links work
        stage(run_dir, Path(folder))
        try:
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message,
                                       repo_type=REPO_TYPE)
        except NETWORK_ERRORS as error:
            raise network_failure(repo_id, error) from error
    return str(commit.commit_url)
