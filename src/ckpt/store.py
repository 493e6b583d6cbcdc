"""CheckpointStore: the public facade. It orchestrates; the modules it calls do the work."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import aliased

from ckpt import commit, refs, run_exit, validation
from ckpt.blobs import BlobStore
from ckpt.commit import Context, as_utc, writer_dead
from ckpt.errors import (CheckpointNotFoundError, CorruptCheckpointError, IndexCorruptError,
                         InvalidArgumentError, ReadOnlyStoreError, StoreNotFoundError)
from ckpt.index.engine import Index
from ckpt.index.migrate import ensure_schema
from ckpt.index.schema import Checkpoint, Metric, Run, Tag
from ckpt.loading import load_into as _load_into
from ckpt.loading import load_state
from ckpt.metrics import check_mode, resolve_mode, to_float
from ckpt.records import CheckpointDiff, CheckpointInfo, LoadReport, RunInfo, VerifyReport
from ckpt.selectors import Resolver, resolve
from ckpt.serialization import manifest as mf
from ckpt.lazy import LazyCheckpoint
from ckpt.snapshot import take
from ckpt.staging import Staging

log = logging.getLogger("ckpt")
MARKER = "ckpt-store.json"
COMPRESSION = ("auto", "none", "zstd")
#: Statuses a run can be given; "crashed" is never stored: it is what a dead "running" run reports.
RUN_STATUSES = ("completed", "failed", "interrupted", "running")


class PendingSave:
    """An asynchronous save in flight: ``result()`` waits for the commit and returns its CheckpointInfo."""

    def __init__(self, future: Future) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> CheckpointInfo:
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)


def _default_index(blobs: BlobStore) -> str:
    if blobs.is_local:
        return f"sqlite:///{os.path.join(blobs.root, 'index.sqlite')}"
    if blobs.protocol == "memory":
        return "sqlite://"
    cache = Path(os.environ.get("CKPT_CACHE_DIR", Path.home() / ".cache" / "ckpt"))
    cache.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cache / (hashlib.sha256(blobs.url.encode()).hexdigest()[:24] + '.sqlite')}"


class CheckpointStore:
    """A checkpoint store at ``location`` (a directory or an fsspec URL) with its index.

    ``index`` takes any SQLAlchemy URL (default: SQLite inside a local store). ``compression`` is
    "auto" (zstd only where storage is slower than the compressor, i.e. not on local disk), "zstd"
    or "none". ``readonly`` opens without creating, migrating or recovering anything.
    """

    def __init__(self, location: str | os.PathLike[str], *, index: str | None = None,
                 compression: str = "auto", readonly: bool = False,
                 storage_options: dict[str, Any] | None = None, rebuild_index: bool = False) -> None:
        if compression not in COMPRESSION:
            raise InvalidArgumentError(f"compression must be one of {COMPRESSION}, not {compression!r}")
        location = os.fspath(location)
        if not isinstance(location, str) or not location:
            raise InvalidArgumentError(f"location must be a path or URL, got {location!r}")
        if "://" not in location:
            location = os.path.abspath(os.path.expanduser(location))
        self.readonly = readonly
        self.blobs = BlobStore(location, storage_options)
        self._open_storage()
        self.location = self.blobs.url
        self.compression = compression
        self._compress = compression == "zstd" or (compression == "auto" and not self.blobs.is_local
                                                   and self.blobs.protocol != "memory")
        self.index = Index(index or _default_index(self.blobs))
        try:
            ensure_schema(self.index, readonly=readonly)
        except IndexCorruptError:
            if not (rebuild_index and index is None and self.index.url.startswith("sqlite:///")):
                raise
            self._move_index_aside()
            ensure_schema(self.index, readonly=readonly)
        self._ctx = Context(self.blobs, self.index)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: PendingSave | None = None
        self._staging = Staging()
        if not readonly:
            commit.recover(self._ctx)
        self._sync_index()

    # -- opening -------------------------------------------------------------------------------
    def _move_index_aside(self) -> None:
        path = self.index.url[len("sqlite:///"):]
        self.index.dispose()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, f"{path}.damaged-{stamp}{suffix}")
        log.warning("moved the damaged index aside to %s.damaged-%s; rebuilding it from the manifests", path, stamp)
        self.index = Index(f"sqlite:///{path}")

    def _open_storage(self) -> None:
        if self.blobs.exists(MARKER):
            return
        if self.readonly:
            raise StoreNotFoundError(f"no ckpt store at {self.blobs.url}; check --store / CKPT_STORE, or create "
                                     f"one by saving to it (CheckpointStore(path).save(...))")
        for d in ("packs", "manifests", "refs/tags", "refs/runs"):
            self.blobs.makedirs(d)
        doc = {"ckpt_store": 1, "created_at": datetime.now(timezone.utc).isoformat()}
        try:
            self.blobs.write(MARKER, [json.dumps(doc).encode()], exclusive=True)
        except FileExistsError:
            pass

    def _sync_index(self) -> None:
        """An empty index over a store with manifests (deleted index, new machine) is rebuilt."""
        with self.index.read() as s:
            if s.scalar(select(func.count()).select_from(Checkpoint)):
                return
        if any(e.name.endswith(".json") and not e.name.startswith(".") for e in self.blobs.list("manifests")):
            log.warning("index at %s is empty but the store has manifests: rebuilding it", self.index.url)
            from ckpt.reindex import rebuild
            rebuild(self._ctx, only_if_empty=True)

    @staticmethod
    def exists(location: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bool:
        """Whether ``location`` holds a ckpt store (without creating one)."""
        location = os.fspath(location)
        if "://" not in location:
            location = os.path.abspath(os.path.expanduser(location))
        return BlobStore(location, storage_options).exists(MARKER)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._staging.release()
            self.index.dispose()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.location!r}, index={self.index.url!r})"

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyStoreError("this store was opened read-only; open it without readonly=True to change it")

    # -- saving --------------------------------------------------------------------------------
    def save(self, run: str, epoch: int, state: Any, metrics: dict[str, Any] | None = None, *,
             step: int | None = None, parent: Any = None, tags: tuple[str, ...] | list[str] = (),
             blocking: bool = True) -> CheckpointInfo | PendingSave:
        """Store ``state`` durably; returns once it is fsynced, hashed and indexed.

        Only tensors new to the store are written. ``parent`` (a selector or CheckpointInfo) records
        lineage when a run resumes or fine-tunes from another checkpoint; by default it is the run's
        previous checkpoint. With ``blocking=False`` the call returns right after copying the tensors
        into reused staging buffers and a background thread does the rest: the returned PendingSave's
        ``result()`` gives the CheckpointInfo; a failure is raised there, at the next save, or at
        ``wait()``. The checkpoint is visible only once committed.
        """
        self._writable()
        self.wait()  # earlier async saves commit first (lineage order) and release the staging buffers
        run = validation.run_name(run)
        epoch = validation.integer("epoch", epoch)  # type: ignore[assignment]
        step = validation.integer("step", step, allow_none=True)
        metric_values = {name: to_float(name, v) for name, v in (metrics or {}).items()}
        if isinstance(tags, str):
            tags = (tags,)
        tags = tuple(validation.tag_name(t) for t in tags)
        parent_id = self._parent_id(parent) if parent is not None else None
        if blocking:
            return self._persist(run, epoch, take(state), metric_values, step, parent_id, parent is None, tags)
        snap = take(state, self._staging)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-save")
        future = self._pool.submit(self._persist, run, epoch, snap, metric_values, step, parent_id,
                                   parent is None, tags)
        self._pending = PendingSave(future)
        return self._pending

    def _persist(self, run: str, epoch: int, snap: Any, metrics: dict[str, float], step: int | None,
                 parent: str | None, default_parent: bool, tags: tuple[str, ...]) -> CheckpointInfo:
        m = commit.save(self._ctx, run=run, epoch=epoch, snap=snap, metrics=metrics, step=step,
                        parent=parent, default_parent=default_parent, tags=tags, compress=self._compress,
                        write_tag_ref=lambda t, cid: refs.write(self.blobs, "tags", t, {"checkpoint": cid}))
        run_exit.track((id(self.index), run), lambda status, r=run: self._finish_at_exit(r, status))
        return self.get(m.id)

    def wait(self) -> CheckpointInfo | None:
        """Block until the last asynchronous save is committed; raises its error if it failed."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def open(self, selector: Any = "latest", *, run: str | None = None) -> LazyCheckpoint:
        """A lazy view of one checkpoint: tensors are read (and checked) one at a time, on access."""
        info = self.get(selector, run=run)
        return LazyCheckpoint(self.blobs, self._ctx.manifest(info.id), info)

    def _parent_id(self, parent: Any) -> str:
        if isinstance(parent, CheckpointInfo):
            return parent.id
        return self.get(parent).id

    # -- reading -------------------------------------------------------------------------------
    def _rows(self, selector: Any, run: str | None = None, mode: str | None = None,
              limit: int = 50) -> list[CheckpointInfo]:
        if isinstance(selector, CheckpointInfo):
            selector = selector.id
        with self.index.read() as s:
            return [self._info(r) for r in resolve(s, selector, run=run, mode=mode, limit=limit)]

    def get(self, selector: Any = "latest", *, run: str | None = None) -> CheckpointInfo:
        """The index entry a selector names (no data is read)."""
        return self._rows(selector, run, limit=1)[0]

    def manifest(self, selector: Any = "latest", *, run: str | None = None) -> mf.Manifest:
        return self._ctx.manifest(self.get(selector, run=run).id)

    def load(self, selector: Any = "latest", *, run: str | None = None, map_location: Any = None,
             key: Any = None, verify: bool | str = True, with_info: bool = False) -> Any:
        """The saved structure, exactly (tensors on CPU unless ``map_location``).

        ``key`` loads one sub-tree (e.g. "model") and reads only its bytes. For "latest" and "best"
        forms a damaged checkpoint is skipped, with a warning, for the next one; ``with_info=True``
        returns ``(state, CheckpointInfo)`` so the caller knows which one it got.
        """
        used: list[mf.Manifest] = []

        def work(m: mf.Manifest) -> Any:
            state = load_state(self.blobs, m, key=key, map_location=map_location, verify=verify)
            used.append(m)
            return state

        state = self._with_fallback(selector, run, work)
        return (state, self.get(used[-1].id)) if with_info else state

    def load_into(self, target: Any, selector: Any = "latest", *, key: Any = "model", strict: bool = True,
                  run: str | None = None, verify: bool | str = True) -> LoadReport:
        """Restore into existing tensors in place (a module, a dict of tensors, or an optimizer)."""
        out: list[Any] = []

        def work(m: mf.Manifest) -> Any:
            out.append(m)
            return _load_into(self.blobs, m, target, key=key, strict=strict, verify=verify)

        missing, unexpected, loaded = self._with_fallback(selector, run, work)
        return LoadReport(missing, unexpected, loaded, self.get(out[-1].id))

    def _with_fallback(self, selector: Any, run: str | None, work, _attempt: int = 0) -> Any:  # type: ignore[no-untyped-def]
        candidates = self._rows(selector, run)
        for i, info in enumerate(candidates):
            try:
                return work(self._ctx.manifest(info.id))
            except CorruptCheckpointError as exc:
                if not self._committed(info.id):  # deleted (pruned) by another process meanwhile
                    if len(candidates) == 1 and _attempt >= 2:
                        raise CheckpointNotFoundError(
                            f"checkpoint {info.short_id} ({info.run}@{info.epoch}) was deleted while it was "
                            f"being loaded") from exc
                    if len(candidates) == 1 or i + 1 == len(candidates):
                        return self._with_fallback(selector, run, work, _attempt + 1)  # resolve afresh
                    continue
                if i + 1 == len(candidates):
                    raise
                nxt = candidates[i + 1]
                msg = (f"checkpoint {info.short_id} ({info.run}@{info.epoch}) is damaged ({exc}); using "
                       f"{nxt.short_id} ({nxt.run}@{nxt.epoch}) instead. Run `ckpt verify` to see the damage.")
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                log.warning(msg)
        raise AssertionError("unreachable")  # pragma: no cover

    def _committed(self, checkpoint_id: str) -> bool:
        with self.index.read() as s:
            return s.scalar(select(Checkpoint.status).where(Checkpoint.id == checkpoint_id)) == "committed"

    def latest(self, run: str | None = None) -> CheckpointInfo:
        return self.get("latest", run=run)

    def best(self, metric: str | None = None, mode: str | None = None, run: str | None = None) -> CheckpointInfo:
        """The best committed checkpoint by ``metric`` (default: the run's objective). NaN never wins."""
        with self.index.read() as s:
            return self._info(Resolver(s).best(metric, mode=mode, run=run, limit=1)[0])

    def list(self, run: str | None = None, sort: str | None = None, *, mode: str | None = None,
             tag: str | None = None, limit: int | None = None) -> list[CheckpointInfo]:
        """Committed checkpoints, oldest first; with ``sort=METRIC``, best first (NaN and missing last)."""
        with self.index.read() as s:
            q = select(Checkpoint).where(Checkpoint.status == "committed")
            if run is not None:
                q = q.where(Checkpoint.run_id == Resolver(s).run_row(run).id)
            if tag is not None:
                q = q.join(Tag, Tag.checkpoint_id == Checkpoint.id).where(Tag.name == tag)
            if sort is None or sort == "created":
                q = q.order_by(Checkpoint.seq)
            elif sort == "epoch":
                q = q.join(Run, Run.id == Checkpoint.run_id).order_by(Run.name, Checkpoint.epoch,
                                                                      Checkpoint.step_key, Checkpoint.seq)
            else:
                # Best first in two index-friendly queries: rows with a finite value by (name, value),
                # then the rest (no value, NaN, inf) in commit order.
                mode = check_mode(resolve_mode(sort, mode or Resolver(s).declared_mode(sort)))
                ranked = q.join(Metric, and_(Metric.checkpoint_id == Checkpoint.id, Metric.name == sort)) \
                    .where(Metric.value.is_not(None)) \
                    .order_by(Metric.value.desc() if mode == "max" else Metric.value.asc(), Checkpoint.seq)
                rows = list(s.scalars(ranked.limit(limit) if limit is not None else ranked))
                if limit is None or len(rows) < limit:
                    m = aliased(Metric)
                    rest = q.outerjoin(m, and_(m.checkpoint_id == Checkpoint.id, m.name == sort)) \
                        .where(m.value.is_(None)).order_by(Checkpoint.seq)
                    if limit is not None:
                        rest = rest.limit(limit - len(rows))
                    rows += list(s.scalars(rest))
                return [self._info(r) for r in rows]
            if limit is not None:
                q = q.limit(limit)
            return [self._info(r) for r in s.scalars(q)]

    def _info(self, row: Checkpoint) -> CheckpointInfo:
        return CheckpointInfo(
            id=row.id, run=row.run.name, epoch=row.epoch, step=row.step,
            metrics={m.name: float(m.raw) for m in row.metrics}, content_hash=row.content_hash or "",
            parent=row.parent_id, created_at=as_utc(row.created_at), logical_size=row.logical_size,
            new_bytes=row.new_bytes, tags=tuple(sorted(t.name for t in row.tags)), status=row.status)

    # -- runs ----------------------------------------------------------------------------------
    def set_objective(self, run: str, metric: str, mode: str | None = None) -> None:
        """Declare what 'best' means for a run; mode defaults to the metric name's convention."""
        self._writable()
        run = validation.run_name(run)
        mode = check_mode(resolve_mode(metric, mode))
        to_float(metric, 0.0)

        def txn(s):  # type: ignore[no-untyped-def]
            r = commit.touch_run(s, run, status=None)
            r.objective_metric, r.objective_mode = metric, mode
            return r.status
        status = self.index.write_txn(txn)
        refs.write(self.blobs, "runs", run, {"objective": metric, "mode": mode, "status": status})

    def finish_run(self, run: str, status: str = "completed") -> None:
        """Mark a run completed, failed or interrupted (preempted, Ctrl-C). Runs saved to are marked
        completed (or failed, after an unhandled exception) automatically when the interpreter exits."""
        self._writable()
        if status not in RUN_STATUSES:
            raise InvalidArgumentError(f"status must be one of {RUN_STATUSES}, not {status!r}")
        run = validation.run_name(run)

        def txn(s):  # type: ignore[no-untyped-def]
            r = commit.touch_run(s, run, status=status)
            return r.objective_metric, r.objective_mode
        objective, mode = self.index.write_txn(txn)
        refs.write(self.blobs, "runs", run, {"objective": objective, "mode": mode, "status": status})
        run_exit.forget((id(self.index), run))

    def _finish_at_exit(self, run: str, status: str) -> None:
        def txn(s):  # type: ignore[no-untyped-def]
            s.execute(update(Run).where(Run.name == run, Run.status == "running", Run.pid == os.getpid())
                      .values(status=status, updated_at=commit.now()))
        self.index.write_txn(txn)

    def runs(self) -> list[RunInfo]:
        """Every run with its status; a 'running' run whose process is gone is reported 'crashed'."""
        out = []
        with self.index.read() as s:
            for r in s.scalars(select(Run).order_by(Run.created_at)):
                q = select(Checkpoint).where(Checkpoint.run_id == r.id, Checkpoint.status == "committed")
                count = s.scalar(select(func.count()).select_from(q.subquery())) or 0
                last = s.scalars(q.order_by(Checkpoint.seq.desc()).limit(1)).first()
                status = r.status
                if status == "running" and writer_dead(r.host, r.pid, r.heartbeat_at or r.updated_at):
                    status = "crashed"
                best_value = None
                if r.objective_metric:
                    try:
                        best = Resolver(s).best(None, run=r.name, limit=1)[0]
                        best_value = next((float(m.raw) for m in best.metrics if m.name == r.objective_metric), None)
                    except Exception:
                        best_value = None
                out.append(RunInfo(r.name, status, r.objective_metric, r.objective_mode, as_utc(r.created_at),
                                   as_utc(r.updated_at), r.host, r.pid, count,
                                   last.epoch if last else None, best_value))
        return out

    # -- tags and deletion ---------------------------------------------------------------------
    def tag(self, selector: Any, name: str) -> CheckpointInfo:
        """Point tag ``name`` at a checkpoint (moving it if it exists). Tagged checkpoints are kept by prune."""
        self._writable()
        name = validation.tag_name(name)
        info = self.get(selector)
        refs.write(self.blobs, "tags", name, {"checkpoint": info.id})

        def txn(s):  # type: ignore[no-untyped-def]
            s.execute(delete(Tag).where(Tag.name == name))
            s.add(Tag(name=name, checkpoint_id=info.id, created_at=commit.now()))
        self.index.write_txn(txn)
        return self.get(info.id)

    def untag(self, name: str) -> None:
        self._writable()
        name = validation.tag_name(name)
        self.index.write_txn(lambda s: s.execute(delete(Tag).where(Tag.name == name)))
        refs.delete(self.blobs, "tags", name)

    def delete(self, selector: Any, *, free: bool = True) -> CheckpointInfo:
        """Remove a checkpoint (index row, manifest, tags). With ``free``, the packs that only it used are
        deleted at once; packs it shares with other checkpoints stay."""
        self._writable()
        info = self.get(selector)
        from ckpt.retention import freed_packs
        packs = freed_packs(self.index, [info.id]) if free else {}

        def mark(s):  # type: ignore[no-untyped-def]
            row = s.get(Checkpoint, info.id)
            if row is not None:
                row.status, row.host, row.pid = "deleting", commit.HOST, os.getpid()
            return [t.name for t in row.tags] if row is not None else []
        tags = self.index.write_txn(mark)
        for t in tags:
            refs.delete(self.blobs, "tags", t)
        self.blobs.delete(mf.path_for(info.id))
        self._ctx.forget(info.id)
        self.index.write_txn(lambda s: s.execute(delete(Checkpoint).where(Checkpoint.id == info.id)))
        if packs:
            from ckpt.gc import collect
            collect(self._ctx, dry_run=False, grace_seconds=0, only=set(packs))
        return info

    def prune(self, *, keep_last: int | None = None, keep_best: int | None = None,
              keep_every: int | None = None, metric: str | None = None, mode: str | None = None,
              run: str | None = None, dry_run: bool = False):  # type: ignore[no-untyped-def]
        """Apply a retention policy per run (all runs unless ``run``) and free the space it releases.

        Tagged checkpoints, each run's latest and best, and branch points are always kept.
        Returns a PrunePlan (kept with reasons, removed, bytes freed).
        """
        from ckpt.gc import collect
        from ckpt.retention import RetentionPolicy, branch_points, freed_packs, plan
        policy = RetentionPolicy(keep_last, keep_best, keep_every, metric, mode)
        if not dry_run:
            self._writable()
        by_run: dict[str, list[CheckpointInfo]] = {}
        for info in self.list(run=run):  # raises a clear error for an unknown run
            by_run.setdefault(info.run, []).append(info)
        with self.index.read() as s:
            objectives = {r.name: (r.objective_metric, r.objective_mode) for r in s.scalars(select(Run))}
        ids = [i.id for infos in by_run.values() for i in infos]
        result = plan(by_run, objectives, policy, branch_points(self.index, ids))
        packs = freed_packs(self.index, [i.id for i in result.remove])
        result.bytes_freed = sum(packs.values())
        result.dry_run = dry_run
        if not dry_run:
            for info in result.remove:
                self.delete(info.id)
            if packs:
                collect(self._ctx, dry_run=False, grace_seconds=0, only=set(packs))
        return result

    # -- maintenance ---------------------------------------------------------------------------
    def verify(self, full: bool = True) -> VerifyReport:
        """Check index, manifests and packs against each other; ``full`` re-hashes every tensor."""
        from ckpt.verify import verify_store
        return verify_store(self._ctx, full=full)

    def reindex(self) -> int:
        """Rebuild the index from the manifests on storage; returns the number of checkpoints indexed."""
        self._writable()
        from ckpt.reindex import rebuild
        return rebuild(self._ctx)

    def gc(self, *, dry_run: bool = False, grace_seconds: float = 3600.0):  # type: ignore[no-untyped-def]
        """Remove packs that no checkpoint refers to (older than the grace period), and dead temp files."""
        if not dry_run:
            self._writable()
        from ckpt.gc import collect
        return collect(self._ctx, dry_run=dry_run, grace_seconds=grace_seconds)

    def diff(self, a: Any, b: Any) -> CheckpointDiff:
        """What changed between two checkpoints; unchanged tensors are recognised by hash, unread."""
        from ckpt.diff import diff_checkpoints
        ia, ib = self.get(a), self.get(b)
        return diff_checkpoints(self.blobs, ia, ib, self._ctx.manifest(ia.id), self._ctx.manifest(ib.id))
