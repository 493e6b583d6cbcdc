"""Rendering for people: rich tables on stdout, progress on stderr, both plain when not a terminal.

rich already drops colour when its stream is not a terminal (and honours NO_COLOR / TERM=dumb);
progress bars are shown only when stderr is a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table


def stdout() -> Console:
    """Markup is off: run names, tags and keys are printed literally; styles come from rich.text.Text."""
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal:  # piped output: never squeeze, wrap or crop columns
        console = Console(highlight=False, markup=False, emoji=False, width=10_000, no_color=True)
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False, markup=False, emoji=False)


def table(*columns: str, right: tuple[str, ...] = ()) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    return t


def show(renderable: Any) -> None:
    console = stdout()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:  # for grep and awk: no trailing padding
        console.print(renderable, crop=False, overflow="ignore")
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def progress_enabled() -> bool:
    if os.environ.get("CKPT_NO_PROGRESS"):
        return False
    return stderr().is_terminal and sys.stderr.isatty()


Advance = Callable[[int], None]


@contextmanager
def progress(description: str, total: int | None = None, *, unit: str = "bytes") -> Iterator[Advance]:
    """A transient bar (``total`` known) or spinner on stderr; yields ``advance(n)``. No-op off a terminal."""
    if not progress_enabled():
        yield lambda n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn, TransferSpeedColumn)
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}", markup=False)]
    if total:
        columns += [BarColumn(), DownloadColumn() if unit == "bytes" else MofNCompleteColumn()]
        if unit == "bytes":
            columns.append(TransferSpeedColumn())
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=stderr(), transient=True) as bar:
        task = bar.add_task(description, total=total or None)
        done = [0]

        def advance(n: int) -> None:  # totals are estimates (file overhead): never show more than 100%
            done[0] += n
            bar.update(task, completed=min(done[0], total) if total else done[0])
        yield advance
