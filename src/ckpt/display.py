"""How sizes, metric values and ages are shown: the same in the terminal and on the web view."""

from __future__ import annotations

import math
from datetime import datetime, timezone


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_metric(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"  # nan and inf print as such


def fmt_delta(a: float | None, b: float | None) -> str:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return ""
    d = b - a
    return f"{'+' if d >= 0 else ''}{d:.4g}"


def age(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    secs = (datetime.now(timezone.utc) - ts).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{int(max(secs, 0))}s ago"
