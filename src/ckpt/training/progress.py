"""What the loop shows: a tqdm bar per epoch on a terminal, one summary line per epoch."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any


def wants_bar(progress: bool | str) -> bool:
    """``"auto"``: a bar only when stderr is a terminal (not in CI logs or captured output)."""
    if progress == "auto":
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def epoch_bar(epoch: int, total: int | None, initial: int) -> Any:
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="batch", leave=True,
                dynamic_ncols=True, file=sys.stderr)


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"


def postfix(metrics: Mapping[str, float]) -> dict[str, str]:
    return {k: fmt(v) for k, v in metrics.items()}


def summary(epoch: int, metrics: Mapping[str, float], *, best: bool, saved: Any = None) -> str:
    parts = [f"epoch {epoch}"] + [f"{k} {fmt(v)}" for k, v in metrics.items()]
    if best:
        parts.append("best so far")
    if saved is not None:
        parts.append(f"saved {saved.short_id} (+{_size(saved.new_bytes)})")
    return " | ".join(parts)


def _size(n: int) -> str:
    """Binary units, like the command line's (KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover
