"""The catalog: the index database as a cache of storage, and the only package that holds SQL.

Importable without torch, so the CLI's read commands, a web view or a script can query a store in
milliseconds::

    from ckpt.catalog import Catalog
    cat = Catalog("sqlite:///checkpoints/index.sqlite", readonly=True)
    cat.list(run="resnet-a", sort="val_acc", limit=5)

Nothing here ever decides that data on storage may be deleted: deletion decides from the manifests on
storage under the store's exclusive lock (ckpt.commit); the catalog only says what it believes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ckpt.catalog import queries, writes
from ckpt.errors import CheckpointNotFoundError
from ckpt.catalog.engine import Index, display_url, readonly_sqlite_url
from ckpt.catalog.migrate import ensure_schema
from ckpt.catalog.raw import Raw
from ckpt.catalog.schema import (Checkpoint, CheckpointPack, Claim, Meta, Metric, Pack, Run, Tag,
                                 TensorBlob)
from ckpt.catalog.selectors import MAX_CANDIDATES, Resolver, parse, resolve
from ckpt import validation
from ckpt.records import CheckpointInfo, RunInfo

__all__ = ["Catalog", "display_url", "parse"]

T = TypeVar("T")
TABLES = (Run, Checkpoint, Metric, Tag, Pack, TensorBlob, CheckpointPack, Claim, Meta)


class Catalog:
    """Queries and writes over one index database (SQLite file, in-memory SQLite, PostgreSQL...)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.readonly = readonly
        #: (path, file signature) while the index is open immutable: SQLite then never looks at the
        #: file again, so every read compares the signature and reopens once a writer has touched it.
        self._frozen: tuple[str, tuple] | None = None
        if readonly and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            self.index, self._frozen = _open_readonly_sqlite(url)
        else:
            self.index = Index(url)
        ensure_schema(self.index, readonly=readonly)

    @property
    def url(self) -> str:
        return self.index.url

    @property
    def dialect(self) -> str:
        return self.index.dialect

    def close(self) -> None:
        self.index.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._thawed().read() as s:
            yield s

    @contextmanager
    def raw(self) -> Iterator[Raw]:
        """Driver SQL on a plain connection: the reads on a save's path, without ORM sessions."""
        with self._thawed().connect() as conn:
            yield Raw(conn)

    def _thawed(self) -> Index:
        """The index, reopened first when it was opened immutable and the file has changed since (a
        writer committed): a long-lived read-only store must see new checkpoints."""
        if self._frozen is not None:
            path, signature = self._frozen
            if _signature(path) != signature:
                self.index.dispose()
                self.index, self._frozen = _open_readonly_sqlite("sqlite:///" + path)
        return self.index

    def write(self, fn: Callable[..., T], *args: Any, durable: bool = True, raw: bool = False, **kwargs: Any) -> T:
        return self.index.write_txn(fn, *args, durable=durable, raw=raw, **kwargs)

    # -- identity and freshness ---------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        with self.raw() as r:
            return r.value("SELECT value FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        self.write(writes.set_meta, key, value, durable=False)

    def generation(self) -> int:
        """The store's deletion generation this index was last made current with (-1: never)."""
        value = self.meta("generation")
        try:
            return int(value) if value is not None else -1
        except ValueError:
            return -1

    def empty(self) -> bool:
        with self.read() as s:
            return not s.scalar(select(func.count()).select_from(Checkpoint))

    # -- checkpoints ------------------------------------------------------------------------------------
    def resolve(self, selector: Any, *, run: str | None = None, mode: str | None = None,
                limit: int = MAX_CANDIDATES) -> list[CheckpointInfo]:
        """Every checkpoint a selector may mean, preferred first (several only for latest/best forms)."""
        if isinstance(selector, CheckpointInfo):
            selector = selector.id
        with self.read() as s:
            return queries.infos(s, [r.id for r in resolve(s, selector, run=run, mode=mode, limit=limit)])

    def get(self, selector: Any = "latest", *, run: str | None = None) -> CheckpointInfo:
        found = self.resolve(selector, run=run, limit=1)
        if not found:  # matched, then deleted by another process before its row was read
            raise CheckpointNotFoundError(f"no checkpoint matches {validation.describe(selector)} any more: it "
                                          f"was deleted meanwhile")
        return found[0]

    def best(self, metric: str | None = None, mode: str | None = None, run: str | None = None) -> CheckpointInfo:
        with self.read() as s:
            found = queries.infos(s, [Resolver(s).best(metric, mode=mode, run=run, limit=1)[0].id])
        if not found:
            raise CheckpointNotFoundError("the best checkpoint was deleted while it was being looked up; ask again")
        return found[0]

    def list(self, run: str | None = None, sort: str | None = None, *, mode: str | None = None,
             tag: str | None = None, limit: int | None = None) -> list[CheckpointInfo]:
        limit = validation.limit("limit", limit)
        for kind, text in (("run", run), ("sort", sort), ("tag", tag)):
            if isinstance(text, str):
                validation.utf8(kind, text)
        with self.read() as s:
            return queries.list_checkpoints(s, run, sort, mode=mode, tag=tag, limit=limit)

    def status_of(self, checkpoint_id: str) -> str | None:
        with self.read() as s:
            return queries.status_of(s, checkpoint_id)

    def statuses(self, ids: list[str]) -> dict[str, str]:
        """The status of each of ``ids`` this index has a row for."""
        out: dict[str, str] = {}
        with self.read() as s:
            for chunk in writes.chunks(sorted(set(ids))):
                rows = s.execute(select(Checkpoint.id, Checkpoint.status).where(Checkpoint.id.in_(chunk)))
                out.update(rows.all())
        return out

    def committed(self) -> dict[str, int]:
        """Every committed checkpoint id with its manifest format."""
        with self.read() as s:
            return dict(s.execute(select(Checkpoint.id, Checkpoint.format).where(Checkpoint.status == "committed")).all())

    def committed_format(self, checkpoint_id: str) -> int | None:
        """The manifest format of a committed checkpoint (None: not committed here)."""
        with self.read() as s:
            return s.scalar(select(Checkpoint.format).where(Checkpoint.id == checkpoint_id,
                                                            Checkpoint.status == "committed"))

    def latest_id(self, run: str) -> str | None:
        with self.raw() as r:
            return r.value("SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id "
                           "WHERE r.name = ? AND c.status = 'committed' ORDER BY c.seq DESC LIMIT 1", (run,))

    def pending(self) -> list[Any]:
        """Rows of saves not committed (in flight, or left by dead writers)."""
        with self.read() as s:
            return list(s.execute(select(Checkpoint.id, Checkpoint.host, Checkpoint.pid, Checkpoint.created_at,
                                         Checkpoint.status).where(Checkpoint.status != "committed")))

    def lookup(self, checks: list[str]) -> dict[str, list[writes.Stored]]:
        """Where the store holds tensors with these checksums (what dedup confirms by content hash)."""
        with self.raw() as r:
            return writes.lookup(r, checks)

    def pack_sizes(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        with self.raw() as r:
            return dict(r.where_in("SELECT id, size FROM packs WHERE id IN ({})", sorted(set(ids))))

    def packs(self) -> dict[str, int]:
        with self.read() as s:
            return dict(s.execute(select(Pack.id, Pack.size)).all())

    def packs_of(self, ids: list[str]) -> dict[str, set[str]]:
        with self.read() as s:
            return queries.packs_of(s, ids)

    def exclusive_packs(self, ids: list[str]) -> dict[str, int]:
        with self.read() as s:
            return queries.exclusive_packs(s, ids)

    def branch_points(self, ids: list[str]) -> dict[str, str]:
        with self.read() as s:
            return queries.branch_points(s, ids)

    # -- for a live view (ckpt ui): cheap on large indexes ---------------------------------------------
    def commit_marker(self) -> tuple[int, int]:
        """(committed checkpoints, highest commit seq): moves with every commit and deletion."""
        with self.read() as s:
            return queries.commit_marker(s)

    def checkpoint_rows(self, after_seq: int = 0, limit: int | None = None) -> list[tuple]:
        """Committed checkpoints after ``after_seq`` (at most ``limit``), in commit order, as plain tuples
        (see queries.checkpoint_rows)."""
        with self.read() as s:
            return queries.checkpoint_rows(s, after_seq, limit)

    def run_states(self) -> list[RunInfo]:
        """Every run's status and best objective value, without checkpoint counts (cheap)."""
        with self.read() as s:
            return queries.run_states(s)

    def run_totals(self) -> dict[str, tuple[int, int, int, int | None]]:
        """Run -> (checkpoints, bytes held, bytes written, latest epoch), in one pass."""
        with self.read() as s:
            return queries.run_totals(s)

    def best_per_run(self) -> dict[str, str]:
        """Run name -> id of its best checkpoint by its objective (runs with one)."""
        with self.read() as s:
            names = dict(s.execute(select(Run.id, Run.name)).all())
            return {names[k]: cid for k, (_, cid) in queries.best_per_run(s).items()}

    def tags(self) -> dict[str, str]:
        """Every tag -> the id of the checkpoint it names."""
        with self.read() as s:
            return queries.tags(s)

    def run_checkpoints(self, run: str) -> list[CheckpointInfo]:
        """One run's committed checkpoints, oldest first (index-friendly ``list(run=...)``)."""
        with self.read() as s:
            return queries.run_checkpoints(s, run)

    def pack_owners(self, pack_ids: list[str]) -> dict[str, str]:
        """Pack -> the earliest committed checkpoint using it (the save that wrote it)."""
        with self.read() as s:
            return queries.pack_owners(s, sorted(set(pack_ids)))

    # -- runs -----------------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        with self.read() as s:
            return queries.runs(s)

    def objectives(self) -> dict[str, tuple[str | None, str | None]]:
        with self.read() as s:
            return queries.objectives(s)

    def set_objective(self, run: str, metric: str, mode: str) -> str:
        return self.write(writes.set_objective, run, metric, mode)

    def set_status(self, run: str, status: str) -> tuple[str | None, str | None]:
        return self.write(writes.set_status, run, status)

    # -- tags -------------------------------------------------------------------------------------------
    def tag(self, name: str, checkpoint_id: str) -> None:
        self.write(writes.tag, name, checkpoint_id)

    def untag(self, name: str) -> None:
        self.write(writes.untag, name)

    # -- statistics --------------------------------------------------------------------------------------
    def row_counts(self) -> dict[str, int]:
        """Rows per table (the benchmark checks that a save adds O(1) of them)."""
        with self.read() as s:
            return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0 for t in TABLES}


def _signature(path: str) -> tuple:
    import os
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns, os.path.exists(path + "-wal")


def _open_readonly_sqlite(url: str) -> tuple[Index, tuple[str, tuple] | None]:
    """A SQLite index opened read-only, creating nothing: while a writer has it open (its -wal file
    exists) through SQLite's read-only mode, which shares the writer's files; otherwise, and on a
    directory nobody may write (a mounted snapshot), as immutable, which needs no -wal/-shm at all."""
    import os

    from sqlalchemy.exc import DatabaseError, OperationalError

    from ckpt.errors import IndexCorruptError, StorageError
    path = url[len("sqlite:///"):]
    if not os.path.exists(path):
        raise StorageError(f"no index at {path}")
    signature = _signature(path)
    live = os.path.exists(path + "-wal")
    for immutable in ((False, True) if live else (True,)):
        index = Index(readonly_sqlite_url(url, immutable), readonly=True)
        try:
            with index.engine.connect() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
            return index, ((path, signature) if immutable else None)
        except OperationalError as exc:
            index.dispose()
            if immutable:
                raise StorageError(f"cannot open the index {display_url(url)} read-only: {exc.orig}") from exc
        except DatabaseError as exc:
            index.dispose()
            raise IndexCorruptError(f"the index database {display_url(url)} is damaged ({exc.orig}). It is only a "
                                    f"cache of what the store holds: run `ckpt reindex` to rebuild it from the "
                                    f"manifests (the damaged file is kept beside it)") from exc
    raise AssertionError("unreachable")  # pragma: no cover
