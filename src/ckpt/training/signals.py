"""SIGTERM and SIGINT as requests, not interruptions: the loop finishes its step, saves, then stops.

Preemption (SLURM, Kubernetes, spot instances) sends SIGTERM and waits a grace period; Ctrl-C sends
SIGINT. Inside :class:`StopSignals` both only set a flag that the loop reads between steps. A second
Ctrl-C raises KeyboardInterrupt at once, for when the save itself hangs. Outside the main thread (where
Python cannot install handlers) it does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        if self.received is None:
            self.received = signum
            print(f"\n{signal.Signals(signum).name} received: finishing the current step, then saving and "
                  f"stopping" + (" (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""),
                  file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
