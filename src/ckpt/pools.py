"""Process-wide thread pools, made on first use and forgotten in a forked child: a child (a DataLoader
worker) inherits the pool object but not its threads, and work submitted to it would never run."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class LazyPool:
    """One ``ThreadPoolExecutor`` per process, reused by every call (no thread per tensor or per save)."""

    def __init__(self, workers: Callable[[], int], name: str) -> None:
        self._workers, self._name = workers, name
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers(), thread_name_prefix=self._name)
            return self._pool
