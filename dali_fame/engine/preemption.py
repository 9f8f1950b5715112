"""Cluster pre-emption: SIGTERM / SIGUSR1 ask the loop to checkpoint and exit 0.

The handler only sets a flag; the training loop (:func:`dali_fame.engine.loop.train`) combines
the flags of all ranks before every step with one tiny collective, so a signal to any one
process (clusters often signal one task first) makes every rank save the same checkpoint at
the same consistent point and return. Acting on the flag locally would deadlock: the signalled
rank would wait in the checkpoint's barrier while the others ran into the next step's
collectives. Saving inside the signal handler would race with the step in flight and could
write a half-updated model.
"""

from __future__ import annotations

import signal
import threading


class PreemptionFlag:
    """Context manager installing SIGTERM/SIGUSR1 handlers that record the signal.

    Attributes:
        requested: the signal's name (``"SIGTERM"``), None until one arrives.
        signum: its number, 0 until one arrives (what the loop's collective carries).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested: str | None = None
        self.signum: int = 0
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.signum = int(signum)
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
