"""Declaring a run's objective from what a trainer already says is "best" (Lightning's
``ModelCheckpoint(monitor=..., mode=...)``, Hugging Face's ``metric_for_best_model``), so that
``store.get("best")`` and ``ckpt restore best`` work for runs the integrations saved."""

from __future__ import annotations

import logging
from typing import Any

from ckpt.errors import CkptError

log = logging.getLogger("ckpt")


def declare_objective(store: Any, run: str, metric: str, mode: str, source: str) -> bool:
    """Declare ``metric``/``mode`` as ``run``'s objective unless the run already declares one.

    An objective declared before (by ``ckpt objective`` or ``store.set_objective``) is a deliberate
    choice: it is kept, with a warning when it differs. A failure to declare never stops training.
    Returns whether it declared.
    """
    try:
        known = next((r for r in store.runs() if r.name == run), None)
        if known is not None and known.objective:
            if (known.objective, known.mode) != (metric, mode):
                log.warning("ckpt: run %r keeps its declared objective %s (%s); %s names %s (%s). To use it: "
                            "ckpt objective %s %s --%s", run, known.objective, known.mode, source, metric, mode,
                            run, metric, mode)
            return False
        store.set_objective(run, metric, mode)
        return True
    except CkptError as exc:
        log.warning("ckpt: could not declare %s (%s) as run %r's objective: %s", metric, mode, run, exc)
        return False
