"""Checks that a command's input and output locations work, made before any data are loaded or images made.

Each check returns a one-line problem that names the flag, the path, what is wrong and what to do, or None.
Output checks try for real (create the folder, create and delete a probe file) rather than reading permission
bits: that is the only answer that is right for root, read-only mounts, full or network file systems and names
too long for the file system.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

_FIX = "choose another {flag}"


def _reason(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "a name in it is too long for the file system"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return "part of it is an existing file, not a folder"
    return error.strerror or str(error)


def _first_file_on_path(path: Path) -> Path | None:
    """The first existing non-folder among ``path`` and its parents (a file where a folder is needed)."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
        if not candidate.exists():
            return None
    return None


def output_dir_problem(path: str | os.PathLike, flag: str) -> str | None:
    """Can files be written into folder ``path`` (created if missing)? The problem sentence, or None."""
    path = Path(path)
    try:
        blocker = _first_file_on_path(path)
        if blocker is not None:
            return f"{flag} {path}: {blocker} is a file, but a folder is needed there; {_FIX.format(flag=flag)}"
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        return f"{flag} {path}: cannot write there ({_reason(error)}); {_FIX.format(flag=flag)}"
    return None


def output_file_problem(path: str | os.PathLike, flag: str) -> str | None:
    """Can file ``path`` be written (its folder created if missing)? The problem sentence, or None."""
    path = Path(path)
    if len(os.fsencode(path.name)) > _name_max(path.parent):
        return f"{flag} {path}: the file name is too long for the file system; {_FIX.format(flag=flag)}"
    if path.is_dir():
        return f"{flag} {path} is a folder; give a file name, e.g. {path / 'out'}{path.suffix}"
    return output_dir_problem(path.parent, flag)


def input_file_problem(path: str | os.PathLike, flag: str, what: str = "file") -> str | None:
    """Is ``path`` an existing, readable file? The problem sentence, or None."""
    path = Path(path)
    if len(os.fsencode(path.name)) > _name_max(path.parent):
        return f"{flag} {path}: the file name is too long for the file system"
    if not path.exists():
        return f"{flag} {path} does not exist; give the path of the {what}"
    if path.is_dir():
        return f"{flag} {path} is a folder; give the path of the {what} itself"
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        return f"{flag} {path} cannot be read ({_reason(error)})"
    return None


def _name_max(folder: Path) -> int:
    """The file system's longest file name under ``folder``'s nearest existing ancestor (255 where unknown)."""
    existing = next((p for p in [folder, *folder.parents] if _exists(p)), Path("/"))
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False
