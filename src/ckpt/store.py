"""CheckpointStore: the public facade. It orchestrates; the modules it calls do the work (no SQL here).

Importing it does not import torch: the modules that need torch (saving, loading) are imported by the
methods that use them, so the CLI's read commands and tag/untag answer in a fraction of a second."""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ckpt import refs, run_exit, validation
from ckpt.catalog import Catalog
from ckpt.context import Context
from ckpt.errors import (CheckpointNotFoundError, CkptError, CorruptCheckpointError, InvalidArgumentError,
                         MissingBlobError, ReadOnlyStoreError)
from ckpt.format import manifest as mf
from ckpt.locks import Locks
from ckpt.metrics import check_mode, resolve_mode, to_float
from ckpt.opening import StoreFiles, open_catalog, open_files
from ckpt.records import CheckpointDiff, CheckpointInfo, LoadReport, RunInfo, VerifyReport

if TYPE_CHECKING:
    from ckpt.lazy import LazyCheckpoint

log = logging.getLogger("ckpt")
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


class CheckpointStore:
    """A checkpoint store at ``location`` (a directory or an fsspec URL) with its index.

    ``index`` takes any SQLAlchemy URL (default: SQLite inside a local store, a per-host cache for
    remote ones). ``compression`` is "auto" (zstd only where storage is slower than the compressor,
    i.e. not on local disk), "zstd" or "none". ``readonly`` opens without writing anything at all: no
    store, index, schema, migration or recovery is created or run (a missing or old index is rebuilt in
    memory from the manifests).
    """

    def __init__(self, location: str | os.PathLike[str], *, index: str | None = None,
                 compression: str = "auto", readonly: bool = False,
                 storage_options: dict[str, Any] | None = None, rebuild_index: bool = False) -> None:
        if compression not in COMPRESSION:
            raise InvalidArgumentError(f"compression must be one of {COMPRESSION}, not {compression!r}")
        self.readonly = readonly
        self._files: StoreFiles = open_files(location, storage_options, readonly=readonly)
        self.storage = self._files.storage
        self.location = self.storage.url
        self.store_id = self._files.store_id
        self.compression = compression
        self._compress = compression == "zstd" or (compression == "auto" and self.storage.is_object_store)
        self.catalog: Catalog = open_catalog(self._files, index, readonly=readonly, rebuild=rebuild_index)
        self.locks = Locks(self.storage)
        self._ctx = Context(self.storage, self.catalog, self.locks, self.store_id)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: PendingSave | None = None
        self._staging: Any = None  # ckpt.staging.Staging, made by the first asynchronous save
        self._device_staging = threading.local()  # per thread: pinned buffers for blocking saves' GPU tensors
        self._device_stagings: list[Any] = []
        self._files.bind(self._ctx, readonly=readonly)

    # -- compatibility handles ------------------------------------------------------------------
    @property
    def index(self) -> Any:
        """The index database (engine and sessions); prefer the store's methods or ``store.catalog``."""
        return self.catalog.index

    @property
    def compresses(self) -> bool:
        """Whether saves to this store compress tensors (``compression``, resolved for this storage)."""
        return self._compress

    @property
    def context(self) -> Context:
        """The commit protocol's context (storage, catalog, locks): for integrations that write
        checkpoints themselves (ckpt.integrations.dcp)."""
        self._writable()
        return self._ctx

    @staticmethod
    def exists(location: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bool:
        """Whether ``location`` holds a ckpt store (without creating one)."""
        from ckpt.opening import has_store
        return has_store(location, storage_options)

    @staticmethod
    def check_state(state: Any) -> None:
        """Raise UnsupportedTypeError, naming the key path, if ``state`` holds something ckpt cannot store
        (what save would refuse), without storing anything."""
        from ckpt.format.skeleton import flatten
        flatten(state)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for staging in [self._staging, *self._device_stagings]:
                if staging is not None:
                    staging.release()
            self.catalog.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.location!r}, index={self.catalog.url!r})"

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyStoreError("this store was opened read-only; open it without readonly=True to change it")

    # -- saving --------------------------------------------------------------------------------
    def save(self, run: str, epoch: int, state: Any, metrics: dict[str, Any] | None = None, *,
             step: int | None = None, parent: Any = None, tags: tuple[str, ...] | list[str] = (),
             blocking: bool = True, variant: str | None = None) -> CheckpointInfo | PendingSave:
        """Store ``state`` durably; returns once it is fsynced, hashed and indexed.

        Only tensors new to the store are written. ``parent`` (a selector or CheckpointInfo) records
        lineage when a run resumes or fine-tunes from another checkpoint; by default it is the run's
        previous checkpoint. ``variant`` names a second checkpoint at the same (run, epoch, step), e.g.
        "weights" for a weights-only copy. With ``blocking=False`` the call returns right after copying
        the tensors into reused staging buffers and a background thread does the rest: the returned
        PendingSave's ``result()`` gives the CheckpointInfo; a failure is raised there, at the next save,
        or at ``wait()``. The checkpoint is visible only once committed.
        """
        self._writable()
        self.wait()  # earlier async saves commit first (lineage order) and release the staging buffers
        run = validation.run_name(run)
        epoch = validation.integer("epoch", epoch)  # type: ignore[assignment]
        step = validation.integer("step", step, allow_none=True)
        variant = validation.variant_name(variant)
        metric_values = {name: to_float(name, v) for name, v in (metrics or {}).items()}
        if isinstance(tags, str):
            tags = (tags,)
        tags = tuple(validation.tag_name(t) for t in tags)
        parent_id = self._parent_id(parent) if parent is not None else None
        from ckpt.quiet_gc import paused
        from ckpt.snapshot import take
        if blocking:
            with paused():
                return self._persist(run, epoch, take(state, device_staging=self._thread_staging()), metric_values,
                                     step, variant, parent_id, parent is None, tags)
        if self._staging is None:
            from ckpt.staging import Staging
            self._staging = Staging()
        with paused():
            snap = take(state, self._staging)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-save")
        future = self._pool.submit(self._persist, run, epoch, snap, metric_values, step, variant, parent_id,
                                   parent is None, tags)
        self._pending = PendingSave(future)
        return self._pending

    def _thread_staging(self) -> Any:
        """This thread's staging for blocking saves (buffers are allocated on the first GPU tensor only)."""
        staging = getattr(self._device_staging, "value", None)
        if staging is None:
            from ckpt.staging import Staging
            staging = self._device_staging.value = Staging()
            self._device_stagings.append(staging)
        return staging

    def _persist(self, run: str, epoch: int, snap: Any, metrics: dict[str, float], step: int | None, variant: str,
                 parent: str | None, default_parent: bool, tags: tuple[str, ...]) -> CheckpointInfo:
        from ckpt import commit
        from ckpt.quiet_gc import paused
        with paused():
            m = commit.save(self._ctx, run=run, epoch=epoch, snap=snap, metrics=metrics, step=step,
                            variant=variant, parent=parent, default_parent=default_parent, tags=tags,
                            compress=self._compress)
        self.track_run(run)
        from datetime import datetime
        return CheckpointInfo(id=m.id, run=m.run, epoch=m.epoch, step=m.step, metrics=dict(m.metrics),
                              content_hash=m.content_hash, parent=m.parent,
                              created_at=datetime.fromisoformat(m.created_at), logical_size=m.logical_size,
                              new_bytes=m.new_bytes, tags=tuple(sorted(tags)), variant=m.variant, format=m.format)

    def track_run(self, run: str) -> None:
        """Mark ``run`` completed (or failed, after an unhandled exception) when this process exits,
        unless :meth:`finish_run` says otherwise first."""
        ref = weakref.ref(self)

        def finish(status: str, r: str = run) -> None:
            store = ref()
            if store is not None and not store.readonly:
                from ckpt.catalog import writes
                store.catalog.write(writes.finish_at_exit, r, status)
        run_exit.track((id(self.catalog), run), finish)

    def wait(self) -> CheckpointInfo | None:
        """Block until the last asynchronous save is committed; raises its error if it failed."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def open(self, selector: Any = "latest", *, run: str | None = None) -> LazyCheckpoint:
        """A lazy view of one checkpoint: tensors are read (and checked) one at a time, on access."""
        from ckpt.lazy import LazyCheckpoint
        info = self.get(selector, run=run)
        return LazyCheckpoint(self.storage, self._ctx.manifest(info.id, info.format), info)

    def _parent_id(self, parent: Any) -> str:
        if isinstance(parent, CheckpointInfo):
            return parent.id
        return self.get(parent).id

    # -- reading -------------------------------------------------------------------------------
    def resolve(self, selector: Any = "latest", *, run: str | None = None, mode: str | None = None,
                limit: int = 50) -> list[CheckpointInfo]:
        """Every checkpoint a selector may mean, preferred first (several only for latest/best forms)."""
        return self.catalog.resolve(selector, run=run, mode=mode, limit=limit)

    def get(self, selector: Any = "latest", *, run: str | None = None) -> CheckpointInfo:
        """The index entry a selector names (no data is read)."""
        return self.catalog.get(selector, run=run)

    def manifest(self, selector: Any = "latest", *, run: str | None = None) -> mf.Manifest:
        info = self.get(selector, run=run)
        return self._ctx.manifest(info.id, info.format)

    def load(self, selector: Any = "latest", *, run: str | None = None, map_location: Any = None,
             key: Any = None, verify: bool | str = True, with_info: bool = False) -> Any:
        """The saved structure, exactly (tensors on CPU unless ``map_location``, which takes what
        torch.load takes: a device, a string, a dict of locations or a callable).

        ``key`` loads one sub-tree (e.g. "model") and reads only its bytes. For "latest" and "best"
        forms a damaged checkpoint is skipped, with a warning, for the next one; ``with_info=True``
        returns ``(state, CheckpointInfo)`` so the caller knows which one it got.
        """
        from ckpt.reader import load_state

        def work(m: mf.Manifest) -> Any:
            from ckpt.quiet_gc import paused
            with paused():
                return load_state(self.storage, m, key=key, map_location=map_location, verify=verify)

        state, info = self._with_fallback(selector, run, work)
        return (state, info) if with_info else state

    def load_into(self, target: Any, selector: Any = "latest", *, key: Any = "model", strict: bool = True,
                  run: str | None = None, verify: bool | str = True) -> LoadReport:
        """Restore into existing tensors in place (a module, a dict of tensors, or an optimizer).

        An optimizer that already has state (a run rolled back in its own process) gets the checkpoint's
        moments read into the tensors it holds; a fresh one gets new tensors, as ``load_state_dict``."""
        from ckpt.reader import load_into as _load_into

        def work(m: mf.Manifest) -> Any:
            from ckpt.quiet_gc import paused
            with paused():
                return _load_into(self.storage, m, target, key=key, strict=strict, verify=verify)

        (missing, unexpected, loaded), info = self._with_fallback(selector, run, work)
        return LoadReport(missing, unexpected, loaded, info)

    def _with_fallback(self, selector: Any, run: str | None, work, _attempt: int = 0) -> Any:  # type: ignore[no-untyped-def]
        """``(work(manifest), info)`` for the first candidate that loads. The info is the one resolved
        before loading: the checkpoint may be deleted by another process the moment after."""
        candidates = self.resolve(selector, run=run)
        if not candidates:  # everything it matched was deleted between two resolutions
            raise CheckpointNotFoundError(f"no checkpoint matches {validation.describe(selector)} any more: "
                                          f"what it matched was deleted while it was being loaded")
        for i, info in enumerate(candidates):
            try:
                return work(self._ctx.manifest(info.id, info.format)), info
            except CorruptCheckpointError as exc:
                if self._deleted_meanwhile(info, exc):  # pruned, by this or another host, while loading
                    if (len(candidates) == 1 and _attempt >= 2) or _attempt >= 8:
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

    def _deleted_meanwhile(self, info: CheckpointInfo, exc: CorruptCheckpointError) -> bool:
        """Whether a checkpoint that failed to load was deleted (by ckpt, here or on another host)
        rather than damaged: a missing manifest or pack counts as deleted only when a deletion ran since
        the index last looked (the deletion generation moved), else it is damage, reported as such."""
        if self.catalog.status_of(info.id) != "committed":
            return True
        if not isinstance(exc, MissingBlobError) or self.readonly:
            return False
        try:
            generation = self.locks.generation()
            if generation == self.catalog.generation():
                return False
            from ckpt import sync
            sync.sync(self._ctx, generation=generation)
        except CkptError:
            return False
        return self.catalog.status_of(info.id) != "committed"

    def latest(self, run: str | None = None) -> CheckpointInfo:
        return self.get("latest", run=run)

    def best(self, metric: str | None = None, mode: str | None = None, run: str | None = None) -> CheckpointInfo:
        """The best committed checkpoint by ``metric`` (default: the run's objective, or its only metric
        when its direction is clear). NaN never wins."""
        return self.catalog.best(metric, mode, run)

    def list(self, run: str | None = None, sort: str | None = None, *, mode: str | None = None,
             tag: str | None = None, limit: int | None = None) -> list[CheckpointInfo]:
        """Committed checkpoints, oldest first; with ``sort=METRIC``, best first (NaN and missing last)."""
        return self.catalog.list(run, sort, mode=mode, tag=tag, limit=limit)

    # -- runs ----------------------------------------------------------------------------------
    def set_objective(self, run: str, metric: str, mode: str | None = None) -> None:
        """Declare what 'best' means for a run; mode defaults to the metric name's convention."""
        self._writable()
        run = validation.run_name(run)
        mode = check_mode(resolve_mode(metric, mode))
        to_float(metric, 0.0)
        status = self.catalog.set_objective(run, metric, mode)
        refs.write(self.storage, "runs", run, {"objective": metric, "mode": mode, "status": status})

    def finish_run(self, run: str, status: str = "completed") -> None:
        """Mark a run completed, failed or interrupted (preempted, Ctrl-C). Runs saved to are marked
        completed (or failed, after an unhandled exception) automatically when the interpreter exits."""
        self._writable()
        if status not in RUN_STATUSES:
            raise InvalidArgumentError(f"status must be one of {RUN_STATUSES}, not {status!r}")
        run = validation.run_name(run)
        objective, mode = self.catalog.set_status(run, status)
        refs.write(self.storage, "runs", run, {"objective": objective, "mode": mode, "status": status})
        run_exit.forget((id(self.catalog), run))

    def runs(self) -> list[RunInfo]:
        """Every run with its status; a 'running' run whose process is gone is reported 'crashed'."""
        return self.catalog.runs()

    # -- tags and deletion ---------------------------------------------------------------------
    def tag(self, selector: Any, name: str) -> CheckpointInfo:
        """Point tag ``name`` at a checkpoint (moving it if it exists). Tagged checkpoints are kept by prune."""
        self._writable()
        name = validation.tag_name(name)
        info = self.get(selector)
        refs.write(self.storage, "tags", name, {"checkpoint": info.id})
        self.catalog.tag(name, info.id)
        return self.get(info.id)

    def untag(self, name: str) -> None:
        self._writable()
        name = validation.tag_name(name)
        self.catalog.untag(name)
        refs.delete(self.storage, "tags", name)

    def delete(self, selector: Any, *, free: bool = True) -> CheckpointInfo:
        """Remove a checkpoint (manifest, index row, tags). With ``free``, the packs that no other
        checkpoint on storage uses are deleted at once; shared ones stay. Deleting a checkpoint another
        process deleted first is not an error (pass the CheckpointInfo: an id string that matches
        nothing any more is CheckpointNotFoundError, as for a typo)."""
        self._writable()
        try:
            info = self.get(selector)
        except CheckpointNotFoundError:
            if not isinstance(selector, CheckpointInfo):
                raise
            info = selector  # gone already, or being deleted by another process: the same outcome
        from ckpt.deletion import delete_checkpoints
        delete_checkpoints(self._ctx, [info.id], free=free)
        return info

    def prune(self, *, keep_last: int | None = None, keep_best: int | None = None,
              keep_every: int | None = None, metric: str | None = None, mode: str | None = None,
              run: str | None = None, dry_run: bool = False):  # type: ignore[no-untyped-def]
        """Apply a retention policy per run (all runs unless ``run``) and free the space it releases.

        Tagged checkpoints, each run's latest and best, and branch points are always kept.
        Returns a PrunePlan (kept with reasons, removed, bytes freed).
        """
        from ckpt.deletion import delete_planned
        from ckpt.retention import RetentionPolicy, plan
        policy = RetentionPolicy(keep_last, keep_best, keep_every, metric, mode)
        if not dry_run:
            self._writable()

        def make_plan():  # type: ignore[no-untyped-def]
            by_run: dict[str, list[CheckpointInfo]] = {}
            for info in self.list(run=run):  # raises a clear error for an unknown run
                by_run.setdefault(info.run, []).append(info)
            ids = [i.id for infos in by_run.values() for i in infos]
            return plan(by_run, self.catalog.objectives(), policy, self.catalog.branch_points(ids))

        if dry_run:
            result = make_plan()
            result.dry_run = True
            result.bytes_freed = sum(self.catalog.exclusive_packs([i.id for i in result.remove]).values())
            return result

        def in_step() -> bool:  # the index lists exactly the manifests on storage
            from ckpt import sync
            return set(sync.listing(self.storage)) == set(self.catalog.committed())

        try:
            first = make_plan()
        except CheckpointNotFoundError:
            if in_step():
                raise
            first = None  # a run this index has not seen yet (another host saved it): decided below
        if first is not None and not first.remove and in_step():  # the usual case after a save: no lock
            first.dry_run, first.bytes_freed = False, 0
            return first
        plans = []

        def planner() -> list[str]:  # under the exclusive lock, from an index in step with storage
            plans.append(make_plan())
            return [i.id for i in plans[-1].remove]

        freed = delete_planned(self._ctx, planner)
        result = plans[-1]
        result.dry_run = False
        result.bytes_freed = sum(freed.values())
        return result

    # -- maintenance ---------------------------------------------------------------------------
    def verify(self, full: bool = True) -> VerifyReport:
        """Check index, manifests and packs against each other; ``full`` re-hashes every tensor."""
        from ckpt.verify import verify_store
        return verify_store(self._ctx, full=full)

    def sync(self) -> int:
        """Bring the index up to date with storage (checkpoints other hosts saved or deleted); returns
        how many checkpoints it added. Opening a store does this when the index may be behind."""
        from ckpt import sync
        return sync.sync(self._ctx, generation=self.locks.generation() if not self.readonly else None).added

    def reindex(self) -> int:
        """Rebuild the index from the manifests on storage; returns the number of checkpoints indexed.
        Runs under the store's exclusive lock: saves in flight finish first, new ones wait."""
        self._writable()
        from ckpt import sync
        with self.locks.exclusive(what="reindex") as lock:
            return sync.rebuild(self._ctx, generation=lock.generation)

    def gc(self, *, dry_run: bool = False, grace_seconds: float = 3600.0):  # type: ignore[no-untyped-def]
        """Remove packs that no manifest on storage refers to (older than the grace period), and dead
        writers' temp files and uploads."""
        if not dry_run:
            self._writable()
        from ckpt.gc import collect
        return collect(self._ctx, dry_run=dry_run, grace_seconds=grace_seconds)

    def upgrade(self, *, dry_run: bool = False):  # type: ignore[no-untyped-def]
        """Rewrite format-1 manifests as format 2 (same checkpoints, ids and packs); returns an
        UpgradeReport (upgraded ids, skipped ones with the reason). New saves always write format 2."""
        if not dry_run:
            self._writable()
        from ckpt.upgrade import upgrade
        return upgrade(self._ctx, dry_run=dry_run)

    def diff(self, a: Any, b: Any, *, only: Any = None) -> CheckpointDiff:
        """What changed between two checkpoints; unchanged tensors are recognised by hash, unread.
        ``only`` (a key or key path, e.g. "model") restricts the comparison to that sub-tree."""
        from ckpt.diff import diff_checkpoints
        ia, ib = self.get(a), self.get(b)
        path = None if only is None else (tuple(only) if isinstance(only, (list, tuple)) else (only,))
        return diff_checkpoints(self.storage, ia, ib, self._ctx.manifest(ia.id, ia.format),
                                self._ctx.manifest(ib.id, ib.format), only=path)

    def stats(self) -> dict[str, int]:
        """Rows per index table (a save adds O(1) of them, whatever the number of tensors)."""
        return self.catalog.row_counts()


def _marker_doc(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
