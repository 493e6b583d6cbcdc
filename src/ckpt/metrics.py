"""Metric values and directions: which way is better, decided the way Keras' mode="auto" does."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from ckpt.errors import InvalidArgumentError, MetricDirectionError

#: Conventional metric names. A metric whose name contains one of these words (split on
#: non-alphanumerics, so "val_acc", "top1-accuracy", "eval/loss" all match) takes that direction.
HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "f1", "precision", "recall", "score", "iou", "map",
                    "bleu", "rouge", "dice", "top1", "top5", "r2")
LOWER_IS_BETTER = ("loss", "error", "err", "perplexity", "ppl", "mse", "mae", "rmse", "wer", "cer",
                   "nll", "bpd")
MODES = ("max", "min")


def infer_mode(metric: str) -> str | None:
    words = [w for w in re.split(r"[^0-9a-zA-Z]+", metric.lower()) if w]
    for w in reversed(words):  # "val_loss_acc"? the last word is the most specific
        if w in LOWER_IS_BETTER:
            return "min"
        if w in HIGHER_IS_BETTER:
            return "max"
    return None


def resolve_mode(metric: str, declared: str | None) -> str:
    """The declared mode, else the inferred one, else an error that says how to declare it."""
    if declared is not None:
        return check_mode(declared)
    mode = infer_mode(metric)
    if mode is None:
        raise MetricDirectionError(
            f"ckpt cannot tell whether higher or lower {metric!r} is better; declare it with "
            f"store.set_objective(run, {metric!r}, 'max') (or 'min'), or pass mode='max'/'min' "
            f"(CLI: --asc/--desc)")
    return mode


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be 'max' or 'min', not {mode!r}")
    return mode


def to_float(name: Any, value: Any) -> float:
    """A metric value as a float: Python/numpy numbers and one-element tensors are accepted."""
    if not isinstance(name, str) or not name or len(name) > 256 or "\0" in name:
        raise InvalidArgumentError(f"metric names must be non-empty strings of at most 256 characters, "
                                   f"got {name!r}")
    if hasattr(value, "item") and callable(value.item) and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"metric {name!r} must be a number, got {type(value).__name__} "
                                   f"{value!r}; log strings and other values in the state instead")
    return float(value)


def is_finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
