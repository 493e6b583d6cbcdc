"""What every command shares: opening the store, printing JSON or tables, turning errors into exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import click

from ckpt.errors import CkptError


@dataclass
class Ctx:
    store_location: str | None
    index: str | None
    as_json: bool

    def open(self, *, readonly: bool = True):  # type: ignore[no-untyped-def]
        from ckpt.store import CheckpointStore
        if not self.store_location:
            raise click.UsageError("no store given: pass --store PATH_OR_URL or set CKPT_STORE")
        return CheckpointStore(self.store_location, index=self.index, readonly=readonly)


pass_ctx = click.make_pass_decorator(Ctx)


@contextmanager
def fail_on_ckpt_errors() -> Iterator[None]:
    try:
        yield
    except CkptError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, allow_nan=True))


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def age(ts: datetime) -> str:
    secs = (datetime.now(timezone.utc) - ts).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{int(max(secs, 0))}s ago"


def fmt_metric(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"
