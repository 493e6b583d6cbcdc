"""Rendering for people: rich tables on stdout, progress on stderr, both plain when not a terminal.

rich already drops colour when its stream is not a terminal (and honours NO_COLOR / TERM=dumb);
progress bars are shown only when stderr is a terminal, so logs and pipes stay clean.

Two rules hold for everything the CLI prints:

* Whatever a store holds (run names, tags, metric names, keys, values) goes through :func:`safe`
  first: a damaged or foreign store may hold ESC, CR, LF or other control characters, and they are
  printed escaped (``\\x1b``, ``\\n``), never raw, so they cannot drive the terminal or break a row.
* Tables fit the terminal (``COLUMNS`` too, also when piped): short ids, low-value columns dropped
  first, long cells shortened with an ellipsis down to a readable minimum, and nothing wraps. Piped
  output without ``COLUMNS`` is never squeezed, for grep and awk.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

# C0 and C1 controls, DEL, lone surrogates, and the invisible characters that reorder or hide text
# (bidi overrides and isolates, zero-width joiners, line/paragraph separators, BOM).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
                     "\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: Any) -> str:
    """``value`` as text that prints as one inert line: control characters come out escaped."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def safe_text(value: Text) -> Text:
    """A rich Text with the same guarantee (styles are kept unless something had to be escaped)."""
    return Text(safe(value.plain), style=value.style) if _UNSAFE.search(value.plain) else value


def target_width() -> int | None:
    """How wide tables may be: the terminal's width (or ``COLUMNS``), or unlimited when stdout is not
    a terminal and ``COLUMNS`` is not set."""
    console = Console()
    if console.is_terminal:
        return console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def stdout() -> Console:
    """Markup is off: run names, tags and keys are printed literally; styles come from rich.text.Text."""
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal:  # piped output: never squeeze, wrap or crop columns (COLUMNS aside)
        console = Console(highlight=False, markup=False, emoji=False, width=target_width() or 10_000,
                          no_color=True)
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False, markup=False, emoji=False)


GAP = 2  # spaces between two columns (rich's padding of 1 on each side, none at the edges)
FAST_ROWS = 50  # tables longer than this are printed as plain lines (see FitTable.lines)


@dataclass
class Column:
    """A table column and how it gives way when the table is too wide.

    ``priority`` 0 is never dropped; otherwise the highest numbers go first. Columns with a priority of
    ``DROP_EARLY`` or more (age, sizes) are dropped before any cell is shortened; the others only when
    shortening every shortenable column to its ``min_width`` is not enough. ``cut`` is how a cell is
    shortened: "end" (an ellipsis at the end), "middle" (keeps both ends, for key paths) or "prefix"
    (ids: a shorter prefix, no mark).
    """

    header: str
    right: bool = False
    priority: float = 0
    min_width: int | None = None
    cut: str = "end"


DROP_EARLY = 10


def _cut(cell: Text, width: int, how: str) -> Text:
    if cell_len(cell.plain) <= width:
        return cell
    if how == "prefix":
        out = cell.copy()
        out.truncate(width, overflow="crop")
        return out
    if how == "middle" and width >= 5:
        plain = cell.plain
        head = (width - 1) // 2
        tail = width - 1 - head
        left, right = Text(plain, style=cell.style), Text(plain, style=cell.style)
        left.truncate(head, overflow="crop")
        return Text.assemble(left, Text("…", style=cell.style), Text(_right_cells(plain, tail), style=cell.style))
    out = cell.copy()
    out.truncate(width, overflow="ellipsis")
    return out


def _right_cells(text: str, width: int) -> str:
    out = ""
    for ch in reversed(text):
        if cell_len(ch + out) > width:
            break
        out = ch + out
    return out


class FitTable:
    """Rows of cells under ``Column`` specs, rendered to fit a width (see :class:`Column`)."""

    def __init__(self, *columns: Column | str) -> None:
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([safe_text(c) if isinstance(c, Text) else Text(safe("" if c is None else c))
                          for c in cells])

    def natural(self, i: int) -> int:
        return max([cell_len(self.columns[i].header)] + [cell_len(r[i].plain) for r in self.rows])

    def layout(self, width: int | None) -> tuple[list[int], dict[int, int]]:
        """(indices of the columns shown, their widths); every line fits ``width`` when that is possible."""
        active = list(range(len(self.columns)))
        widths = {i: self.natural(i) for i in active}
        if width is None:
            return active, widths

        def total(cols: list[int], w: dict[int, int]) -> int:
            return sum(w[i] for i in cols) + GAP * max(len(cols) - 1, 0)

        def by_drop_order(cols: list[int], early: bool) -> list[int]:
            pick = [i for i in cols if self.columns[i].priority > 0 and
                    (self.columns[i].priority >= DROP_EARLY) == early]
            return sorted(pick, key=lambda i: (-self.columns[i].priority, -i))

        for i in by_drop_order(active, early=True):
            if total(active, widths) <= width:
                break
            active.remove(i)

        def shrink(cols: list[int]) -> dict[int, int] | None:
            w = {i: widths[i] for i in cols}
            excess = total(cols, w) - width
            while excess > 0:
                room = [i for i in cols if self.columns[i].min_width is not None and
                        w[i] > self.header_floor(i)]
                if not room:
                    return None
                widest = max(room, key=lambda i: (w[i] - self.header_floor(i), i))
                w[widest] -= 1
                excess -= 1
            return w

        fitted = shrink(active)
        for i in by_drop_order(active, early=False):
            if fitted is not None:
                break
            active.remove(i)
            fitted = shrink(active)
        if fitted is None:  # even the essential columns at their minimum are too wide: shortest we can
            fitted = {i: self.header_floor(i) if self.columns[i].min_width is not None else widths[i]
                      for i in active}
        return active, fitted

    def lines(self, width: int | None, bold: bool = False) -> tuple[list[str], list[str]]:
        """The table as plain lines (what rich prints for it, without styles), and the hidden headers.

        Rich lays a table out cell by cell, about 1 ms a row; a store's thousands of checkpoints are
        printed this way instead, in a few milliseconds."""
        active, widths = self.layout(width)

        def cell(text: str, i: int) -> str:
            pad = " " * max(widths[i] - cell_len(text), 0)
            return pad + text if self.columns[i].right else text + pad
        head = [cell(_cut(Text(self.columns[i].header), widths[i], "end").plain, i) for i in active]
        header = (" " * GAP).join(head).rstrip()
        out = [f"\x1b[1m{header}\x1b[0m" if bold else header]
        for row in self.rows:
            out.append((" " * GAP).join(cell(_cut(row[i], widths[i], self.columns[i].cut).plain, i)
                                        for i in active).rstrip())
        hidden = [self.columns[i].header for i in range(len(self.columns)) if i not in active]
        return out, hidden

    def header_floor(self, i: int) -> int:
        col = self.columns[i]
        return min(self.natural(i), col.min_width) if col.min_width is not None else self.natural(i)

    def render(self, width: int | None) -> tuple[Table, list[str]]:
        """The rich Table to print and the headers of the columns left out."""
        active, widths = self.layout(width)
        t = Table(box=None, header_style="bold", pad_edge=False)
        for i in active:
            col = self.columns[i]
            header = _cut(Text(col.header), widths[i], "end").plain
            t.add_column(header, justify="right" if col.right else "left", no_wrap=True,
                         min_width=widths[i], max_width=widths[i], overflow="ellipsis")
        for row in self.rows:
            t.add_row(*[_cut(row[i], widths[i], self.columns[i].cut) for i in active])
        hidden = [self.columns[i].header for i in range(len(self.columns)) if i not in active]
        return t, hidden


def show(renderable: Any) -> None:
    """Print a FitTable (fitted to the width), a Text (one line, never wrapped) or any rich renderable."""
    width = target_width()
    hidden: list[str] = []
    if isinstance(renderable, FitTable) and len(renderable.rows) > FAST_ROWS:
        lines, hidden = renderable.lines(width, bold=stdout().is_terminal)
        sys.stdout.write("".join(line + "\n" for line in lines))
        renderable = None
    elif isinstance(renderable, FitTable):
        renderable, hidden = renderable.render(width)
    elif isinstance(renderable, Text):
        renderable = safe_text(renderable)
        renderable.no_wrap = True
        renderable.overflow = "ellipsis"
    console = stdout()
    if renderable is None:
        pass
    elif console.is_terminal:
        console.print(renderable)
    else:
        with console.capture() as captured:  # for grep and awk: no trailing padding
            if width is None:
                console.print(renderable, crop=False, overflow="ignore")
            else:
                console.print(renderable)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    if hidden:
        click.echo(f"note: {', '.join(safe(h) for h in hidden)} left out to fit {width} columns "
                   f"(a wider terminal or --json shows them)", err=True)


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
        task = bar.add_task(safe(description), total=total or None)
        done = [0]

        def advance(n: int) -> None:  # totals are estimates (file overhead): never show more than 100%
            done[0] += n
            bar.update(task, completed=min(done[0], total) if total else done[0])
        yield advance


def join_safe(items: Iterable[Any], sep: str = ", ") -> str:
    return sep.join(safe(i) for i in items)
