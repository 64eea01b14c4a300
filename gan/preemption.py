"""SIGTERM/SIGINT -> finish the current step, checkpoint, exit: what SLURM and Kubernetes preemption expect."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path
from types import FrameType

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def follow_launcher() -> bool:
    """Under ``accelerate launch`` with one process, turn the launcher's death into this process's SIGTERM.

    That launcher waits on the trainer without handling signals, so a SIGTERM sent to it (by ``timeout``,
    ``kill``, systemd, Kubernetes, ``docker stop``) kills it at once and leaves the trainer running, orphaned,
    until something kills it without a checkpoint. Linux's parent-death signal makes the launcher's death a
    SIGTERM here, which checkpoints and exits like any other. Multi-process launchers (torchrun's agent, which
    sets RANK) forward signals themselves and are left alone. Returns whether it is now following a launcher.
    """
    parent = os.getppid()
    if "RANK" in os.environ or not _is_accelerate_launcher(parent):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # not Linux
        return False
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _is_accelerate_launcher(pid: int) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    head = arguments[:4]  # python [-m] accelerate.commands.launch | python /path/to/accelerate launch
    return "accelerate.commands.launch" in head or (any(Path(a).name == "accelerate" for a in head)
                                                     and "launch" in head)


class StopRequest:
    """Records the first SIGTERM or SIGINT; a second one restores the default action (stop at once)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signum: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
