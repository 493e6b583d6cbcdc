"""Early stopping: patience, min_delta, min_epochs, mode; its state is saved in every checkpoint.

The rule is the one Keras and Lightning use: an epoch improves when its value beats the reference (the
value of the last improving epoch) by more than ``min_delta``; after ``patience`` epochs in a row without
improvement training stops, but never before ``min_epochs`` epochs have run (the count keeps going
meanwhile). A NaN or infinite value never improves. Which checkpoint is *best* is not decided here:
the loop asks the store's index (NaN never wins there either), so it survives restarts and pruning.
"""

from __future__ import annotations

import math
from typing import Any

from ckpt.errors import InvalidArgumentError
from ckpt.metrics import resolve_mode


class EarlyStopping:
    def __init__(self, monitor: str, mode: str | None = None, patience: int | None = 5, min_delta: float = 0.0,
                 min_epochs: int = 0) -> None:
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 0):
            raise InvalidArgumentError(f"patience must be a non-negative integer or None, got {patience!r}")
        if not isinstance(min_epochs, int) or min_epochs < 0:
            raise InvalidArgumentError(f"min_epochs must be a non-negative integer, got {min_epochs!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise InvalidArgumentError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.min_epochs = min_epochs
        self.reference: float | None = None  # value of the last improving epoch
        self.reference_epoch: int | None = None
        self.wait = 0  # epochs since then
        self.stopped_epoch: int | None = None

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.reference is None:
            return True
        if self.mode == "max":
            return value > self.reference + self.min_delta
        return value < self.reference - self.min_delta

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s value; True when training should stop after this epoch."""
        value = float(value)
        if self.improves(value):
            self.reference, self.reference_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience and epoch + 1 >= self.min_epochs:
            self.stopped_epoch = epoch
            return True
        return False

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "reference": self.reference,
                "reference_epoch": self.reference_epoch, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["monitor"] != self.monitor or state["mode"] != self.mode:
            raise InvalidArgumentError(
                f"the checkpoint's early stopping watched {state['monitor']!r} ({state['mode']}), this run "
                f"watches {self.monitor!r} ({self.mode}); resume with the same monitor and mode")
        self.reference, self.reference_epoch = state["reference"], state["reference_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]

    def __repr__(self) -> str:
        return (f"EarlyStopping({self.monitor!r}, mode={self.mode!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, min_epochs={self.min_epochs}, wait={self.wait})")
