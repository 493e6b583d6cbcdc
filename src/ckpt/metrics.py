"""Metric values and directions: which way is better, decided the way Keras' mode="auto" does."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from ckpt.errors import InvalidArgumentError, MetricDirectionError
from ckpt.validation import describe, metric_name

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
    """A metric value as a float: Python/numpy numbers and one-element tensors are accepted.

    NaN and infinities are kept (they never win "best"); a number too large for a float, a
    string or any other object is an InvalidArgumentError naming the metric.
    """
    name = metric_name(name)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, numbers.Number):  # a tensor or ndarray: one element only
        size = getattr(value, "numel", None)
        count = size() if callable(size) else getattr(value, "size", 1)
        if count != 1:
            raise InvalidArgumentError(f"metric {name!r} must be a single number, got {type(value).__name__} "
                                       f"with {describe(count)} elements")
        try:
            value = item()
        except Exception as exc:  # a meta tensor, or an object whose item() is something else
            raise InvalidArgumentError(f"metric {name!r}: cannot read a number from {type(value).__name__} "
                                       f"({describe(exc, 120)})") from None
    elif callable(item) and hasattr(value, "dtype"):  # numpy scalar: its Python equivalent
        value = item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"metric {name!r} must be a number, got {type(value).__name__} "
                                   f"{describe(value)}; log strings and other values in the state instead")
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgumentError(f"metric {name!r} is {describe(value, 60)}, too large for a 64-bit float "
                                   f"(about 1.8e308 at most); log it scaled, or in the state") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise InvalidArgumentError(f"metric {name!r}: {type(value).__name__} {describe(value)} cannot be read "
                                   f"as a float ({exc})") from None


def to_floats(metrics: Any) -> dict[str, float]:
    """A whole metrics mapping (None for none) checked with to_float, for the API edge (``save``)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidArgumentError(f"metrics must be a dict of name -> number, got {type(metrics).__name__} "
                                   f"{describe(metrics)}")
    return {k: to_float(k, v) for k, v in metrics.items()}


def is_finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def finite_or_nan(v: Any) -> float:
    """A value to plot: the float, or NaN (a gap in the line) for anything not a finite number."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return f if math.isfinite(f) else math.nan
