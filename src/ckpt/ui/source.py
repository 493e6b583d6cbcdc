"""The store behind the web view, kept current while training goes on in other processes.

A read-only SQLite index may have been opened in SQLite's immutable mode (no writer had it open), which
never sees later commits; so when the index files change on disk the store is simply opened again
(a fraction of a second, at most once per poll). A store read through an in-memory index (no usable
index file) is synchronised from its manifests every few seconds instead. PostgreSQL needs neither.

What every page needs about all checkpoints (lineage, per-run totals, children) is kept in memory as
plain tuples and extended with only the checkpoints committed since (``Catalog.checkpoint_rows``); a
deletion (the committed count drops behind) rebuilds it. Manifests are immutable: a few are cached.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import unquote

from ckpt import CheckpointStore
from ckpt.errors import CkptError
from ckpt.records import CheckpointInfo, RunInfo

#: How often (seconds) a request may look for news in the index; polls come every 2 s.
FRESH_EVERY = 0.5
#: How often an in-memory index is synchronised from the store's manifests.
SYNC_EVERY = 5.0
MANIFESTS_CACHED = 32
#: Rows read per query while the lineage is read at start-up (requests go first between pages).
WARM_PAGE = 10_000


class Row(NamedTuple):
    """One committed checkpoint as the lineage keeps it."""

    seq: int
    id: str
    run: str
    epoch: int
    step: int | None
    variant: str
    parent: str | None
    logical_size: int
    new_bytes: int


@dataclass
class RunTotals:
    checkpoints: int = 0
    logical_size: int = 0
    new_bytes: int = 0
    latest_epoch: int | None = None
    last_seq: int = 0


@dataclass
class Lineage:
    """Every committed checkpoint (plain tuples), its children and the per-run totals."""

    marker: tuple[int, int] = (0, 0)
    rows: dict[str, Row] = field(default_factory=dict)  # id -> row, in commit order
    children: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    totals: dict[str, RunTotals] = field(default_factory=dict)

    def add(self, rows: list[tuple]) -> None:
        """Extend with rows in commit order (tuples as ``Catalog.checkpoint_rows`` gives them)."""
        by_id, children = self.rows, self.children
        acc: dict[str, list] = {}
        make = Row._make
        for t in rows:
            r = make(t)
            by_id[r.id] = r
            if r.parent is not None:
                children[r.parent].append(r.id)
            a = acc.get(r.run)
            if a is None:
                a = acc[r.run] = [0, 0, 0, None, 0]
            a[0] += 1
            a[1] += r.logical_size or 0
            a[2] += r.new_bytes or 0
            a[3], a[4] = r.epoch, r.seq
        for run, (n, held, new, epoch, seq) in acc.items():
            tot = self.totals.setdefault(run, RunTotals())
            tot.checkpoints += n
            tot.logical_size += held
            tot.new_bytes += new
            tot.latest_epoch, tot.last_seq = epoch, seq

    @property
    def last_seq(self) -> int:
        return self.marker[1]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL (plain or SQLite's ``file:`` URI form), None for anything else."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///:memory:",):
        return None
    path = url[len("sqlite:///"):]
    if unquote(path).startswith("file:"):
        path = unquote(unquote(path)[len("file:"):].split("?", 1)[0])
    return path or None


def _stat(path: str) -> tuple:
    out = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(path + suffix)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class Source:
    """The store (reopened when needed), the in-memory lineage and a small manifest cache."""

    def __init__(self, location: str, *, index: str | None = None, storage_options: dict[str, Any] | None = None,
                 writable: bool = False) -> None:
        self.location = location
        self.index_url = index
        self.storage_options = storage_options
        self.writable = writable
        self._lock = threading.RLock()
        self._store = self._open()
        self._checked = 0.0
        self._synced = time.monotonic()
        self._files = self._fingerprint()
        self._lineage: Lineage | None = None
        self._lineage_ready = threading.Event()
        self._lineage_error: BaseException | None = None
        self._manifests: OrderedDict[str, Any] = OrderedDict()
        self._retired: list[CheckpointStore] = []
        self._busy = 0
        self._waiting = 0  # requests waiting for the lineage (the start-up read must not give way to them)
        threading.Thread(target=self._warm, name="ckpt-ui-warm", daemon=True).start()

    # -- the store ------------------------------------------------------------------------------
    def _open(self) -> CheckpointStore:
        return CheckpointStore(self.location, index=self.index_url, readonly=not self.writable,
                               storage_options=self.storage_options)

    @property
    def store(self) -> CheckpointStore:
        return self._store

    def _sqlite(self) -> str | None:
        return sqlite_path(self._store.catalog.url)

    def _in_memory(self) -> bool:
        return self._store.catalog.url in ("sqlite://", "sqlite:///:memory:")

    def _fingerprint(self) -> tuple | None:
        path = self._sqlite()
        return _stat(path) if path else None

    def refresh(self, force: bool = False) -> None:
        """Pick up what other processes committed, at most every FRESH_EVERY seconds."""
        now = time.monotonic()
        if not force and now - self._checked < FRESH_EVERY:
            return
        with self._lock:
            if not force and now - self._checked < FRESH_EVERY:
                return
            self._checked = now
            if not self.writable:
                files = self._fingerprint()
                if files is not None and files != self._files:
                    self._reopen()
                    self._files = files
                elif self._in_memory() and now - self._synced >= SYNC_EVERY:
                    self._synced = now
                    try:
                        self._store.sync()
                    except CkptError:
                        pass
            if self._lineage_ready.is_set() and self._lineage is not None:
                self._update_lineage(self._lineage)

    def _reopen(self) -> None:
        try:
            fresh = self._open()
        except CkptError:
            return  # a writer in the middle of creating or migrating it: the next poll tries again
        old, self._store = self._store, fresh
        self._retired.append(old)
        while len(self._retired) > 2:  # kept open a little, for requests still using it
            self._retired.pop(0).close()

    def close(self) -> None:
        for s in [*self._retired, self._store]:
            try:
                s.close()
            except Exception:  # pragma: no cover - closing a read-only store releases connections only
                pass

    # -- lineage and totals --------------------------------------------------------------------
    def _warm(self) -> None:
        """Read the lineage at start-up, in pages, giving way to requests (the first page must not wait
        for 100,000 rows to be read: it gets its totals from one aggregate query meanwhile)."""
        try:
            lin = Lineage()
            cat = self._store.catalog
            marker = cat.commit_marker()
            after = 0
            while True:
                while self._busy > self._waiting:  # requests that are not waiting for this go first
                    time.sleep(0.005)
                with _gc_paused():
                    rows = [r for r in cat.checkpoint_rows(after, WARM_PAGE) if r[0] <= marker[1]]
                    lin.add(rows)
                if len(rows) < WARM_PAGE:
                    break
                after = rows[-1][0]
            lin.marker = (len(lin.rows), max((r.seq for r in lin.rows.values()), default=0))
            self._update_lineage(lin)  # what was committed (or deleted) while it was being read
            self._lineage = lin
        except BaseException as exc:  # reported to the request that needs it
            self._lineage_error = exc
        finally:
            self._lineage_ready.set()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Mark a request in progress (the start-up read of the lineage pauses meanwhile)."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def _update_lineage(self, lin: Lineage) -> None:
        with _gc_paused():  # 100,000 small tuples and lists: collections would triple the cost
            self._read_lineage(lin)

    def _read_lineage(self, lin: Lineage) -> None:
        cat = self._store.catalog
        marker = cat.commit_marker()
        if marker == lin.marker:
            return
        new = [r for r in cat.checkpoint_rows(lin.last_seq) if r[0] <= marker[1]]
        if lin.marker[0] + len(new) == marker[0]:
            lin.add(new)
            lin.marker = marker
            return
        fresh = Lineage()  # something was deleted: read it all again
        fresh.add(cat.checkpoint_rows(0))
        fresh.marker = (len(fresh.rows), max((r.seq for r in fresh.rows.values()), default=0))
        lin.rows, lin.children, lin.totals, lin.marker = fresh.rows, fresh.children, fresh.totals, fresh.marker

    def lineage(self) -> Lineage:
        if not self._lineage_ready.is_set():
            with self._lock:
                self._waiting += 1
            try:
                self._lineage_ready.wait()
            finally:
                with self._lock:
                    self._waiting -= 1
        if self._lineage is None:
            self._lineage_ready.clear()
            self._lineage_error = None
            self._warm()
            if self._lineage is None:
                raise self._lineage_error or RuntimeError("lineage unavailable")
        return self._lineage

    @property
    def ready(self) -> bool:
        """Whether the lineage has been read (pages that need it no longer wait)."""
        return self._lineage_ready.is_set() and self._lineage is not None

    def locked(self):  # type: ignore[no-untyped-def]
        """Hold while reading the lineage's dicts (the refresh extends them in place)."""
        return self._lock

    # -- queries ----------------------------------------------------------------------------------
    def runs(self) -> list[tuple[RunInfo, RunTotals]]:
        """Every run with its totals: from the lineage in memory, or (while it is still being read at
        start-up) from one aggregate query, so that the first page does not wait for it."""
        states = self._store.catalog.run_states()
        if self._lineage_ready.is_set() and self._lineage is not None:
            with self._lock:
                totals = {k: RunTotals(**vars(v)) for k, v in self._lineage.totals.items()}
        else:
            totals = {k: RunTotals(n, held, new, epoch) for k, (n, held, new, epoch)
                      in self._store.catalog.run_totals().items()}
        out = []
        for r in states:
            t = totals.get(r.name, RunTotals())
            out.append((r, t))
        return out

    def run_checkpoints(self, run: str) -> list[CheckpointInfo]:
        return self._store.catalog.run_checkpoints(run)

    def manifest(self, checkpoint_id: str) -> Any:
        with self._lock:
            m = self._manifests.get(checkpoint_id)
            if m is not None:
                self._manifests.move_to_end(checkpoint_id)
                return m
        m = self._store.manifest(checkpoint_id)
        with self._lock:
            self._manifests[checkpoint_id] = m
            while len(self._manifests) > MANIFESTS_CACHED:
                self._manifests.popitem(last=False)
        return m

    def branch_points(self, ids: list[str]) -> dict[str, str]:
        """Which of ``ids`` another run was resumed or fine-tuned from (and that run), as
        ``Catalog.branch_points`` answers, from the lineage in memory."""
        lin = self.lineage()
        out: dict[str, str] = {}
        with self._lock:
            for cid in ids:
                me = lin.rows.get(cid)
                for child in lin.children.get(cid, ()):
                    row = lin.rows.get(child)
                    if me is not None and row is not None and row.run != me.run:
                        out[cid] = row.run
        return out
