"""SIGTERM/SIGINT -> finish the current step, checkpoint, exit: what SLURM and Kubernetes preemption expect."""

from __future__ import annotations

import signal
from types import FrameType


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
