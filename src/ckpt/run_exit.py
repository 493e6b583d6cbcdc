"""Marks the runs this process saved to as completed (or failed) when the interpreter exits.

A run whose process dies without getting here (SIGKILL, OOM, power loss) stays "running" in the index
and is reported as "crashed" once its process is gone or its heartbeat is stale.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable

_lock = threading.Lock()
_pending: dict[tuple[int, str], Callable[[str], None]] = {}
_failed = False
_installed = False


def _excepthook(exc_type, exc, tb):  # type: ignore[no-untyped-def]
    global _failed
    if not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
        _failed = True
    _previous(exc_type, exc, tb)


_previous = sys.excepthook


def track(key: tuple[int, str], finish: Callable[[str], None]) -> None:
    """Call ``finish(status)`` at exit unless :func:`forget` is called first."""
    global _installed, _previous
    with _lock:
        if not _installed:
            _previous = sys.excepthook
            sys.excepthook = _excepthook
            atexit.register(_at_exit, os.getpid())
            _installed = True
        _pending[key] = finish


def forget(key: tuple[int, str]) -> None:
    with _lock:
        _pending.pop(key, None)


def _at_exit(pid: int) -> None:
    if os.getpid() != pid:  # a forked child exiting must not finish the parent's runs
        return
    status = "failed" if _failed else "completed"
    for finish in list(_pending.values()):
        try:
            finish(status)
        except Exception:  # pragma: no cover - never fail interpreter shutdown
            pass
