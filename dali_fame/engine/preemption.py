"""Cluster pre-emption: SIGTERM / SIGUSR1 ask the loop to checkpoint and exit 0.

The handler only sets a flag; the training loop checks it after each step, saves a
checkpoint at that consistent point and returns. Saving inside the signal handler would race
with the step in flight and could write a half-updated model.
"""

from __future__ import annotations

import signal
import threading


class PreemptionFlag:
    """Context manager installing SIGTERM/SIGUSR1 handlers that set :attr:`requested`."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
