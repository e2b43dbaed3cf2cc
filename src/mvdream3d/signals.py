"""Ctrl-C / SIGTERM as a flag, so long runs (training, text-to-3D) finish their step, save and exit cleanly."""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopOnSignal"]


class StopOnSignal:
    """Inside the ``with`` block SIGINT/SIGTERM set ``requested`` instead of raising; the caller checks it
    between steps. Outside the main thread (e.g. a web server worker) the handlers are not installed."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
