"""The commit protocol: the one module that orders a save's writes, and finishes or undoes them after a crash.

A save (docs/format.md states these as invariants):
  L. storage: take a shared store lock (no deletion can run until it is released); if the deletion
     generation moved since the index last looked, bring the index up to date first;
  A. index: one transaction claims (run, epoch, step, variant) with a ``pending`` row, looks up which
     new tensors the store already holds and claims the big new ones;
  B. storage: the new tensors are streamed into a pack, published create-only (ckpt.writer);
  C. storage: the manifest is published create-only; from here on the checkpoint is durable;
  D. index: the row becomes ``committed`` with its metrics, tags, pack pins and the new tensors'
     locations, in one transaction; then the lock is released.
A crash before C leaves a pending row (dropped on recovery) and maybe an orphan pack (gc removes it);
a crash between C and D is rolled forward on recovery from the manifest.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ckpt import refs, sync, writer
from ckpt.catalog import writes
from ckpt.catalog.queries import HOST, now
from ckpt.context import Context
from ckpt.errors import CkptError
from ckpt.format import manifest as mf
from ckpt.recovery import recover, settle
from ckpt.snapshot import Snapshot

log = logging.getLogger("ckpt")


def hold(checkpoint_id: str) -> None:
    """Mark a claim as being worked on by this process, so recovery here does not take it for abandoned."""
    writes.IN_FLIGHT.add(checkpoint_id)


def release(checkpoint_id: str) -> None:
    writes.IN_FLIGHT.discard(checkpoint_id)


@contextmanager
def in_flight(checkpoint_id: str) -> Iterator[None]:
    hold(checkpoint_id)
    try:
        yield
    finally:
        release(checkpoint_id)


def ensure_current(ctx: Context, generation: int) -> None:
    """Before the index is trusted for dedup: forget what deletions since it last looked removed."""
    if ctx.catalog.generation() != generation:
        sync.sync(ctx, generation=generation, locked=True)


def begin(ctx: Context, ckpt_id: str, run: str, epoch: int, step: int | None, variant: str, parent: str | None,
          default_parent: bool, logical_size: int, lookups: list[str] = (), claims: list[str] = ()) -> writes.Begun:  # type: ignore[assignment]
    """Step A; a dead writer's claim in the way is first rolled forward (its manifest is durable: the
    new claim then fails as a duplicate) or dropped, in a transaction of its own."""
    for _ in range(5):
        try:
            return ctx.catalog.write(writes.begin_save, ckpt_id, run, epoch, step, variant, parent, default_parent,
                                     logical_size, list(lookups), list(claims), durable=False, raw=True)
        except writes.DeadClaim as dead:
            settle(ctx, dead.checkpoint_id)
    return ctx.catalog.write(writes.begin_save, ckpt_id, run, epoch, step, variant, parent, default_parent,
                             logical_size, list(lookups), list(claims), durable=False, raw=True)


def save(ctx: Context, *, run: str, epoch: int, snap: Snapshot, metrics: dict[str, float], step: int | None,
         variant: str, parent: str | None, default_parent: bool, tags: tuple[str, ...], compress: bool) -> mf.Manifest:
    """Run steps L, A-D for one snapshot; returns the committed manifest."""
    ckpt_id = uuid.uuid4().hex
    with in_flight(ckpt_id), ctx.locks.shared(what="save") as lock:
        ensure_current(ctx, lock.generation)
        if default_parent:
            parent = ctx.catalog.latest_id(run)
        parent_manifest = None
        if parent is not None and ctx.catalog.committed_format(parent) is None:
            # Deleted since the caller named it (the index is current under our lock): its manifest may
            # still be in our cache, but its packs may be gone. Lineage only, no reuse.
            log.info("parent %s was deleted meanwhile; its tensors are not reused", parent[:12])
        elif parent is not None:
            try:
                parent_manifest = ctx.manifest(parent, structure=False)  # only its slot table is used
            except CkptError as exc:  # only an optimisation: a damaged parent just means no reuse
                log.warning("not reusing tensors of parent %s: %s", parent[:12], exc)
        plan = writer.plan(snap, parent_manifest)
        begun = begin(ctx, ckpt_id, run, epoch, step, variant, parent, False, snap.logical_size,
                      plan.lookups(), plan.claimable(snap))
        published: list[str] = []
        try:
            written = writer.write(
                ctx.storage, snap, plan, begun, compress=compress,
                claim_more=lambda checks: ctx.catalog.write(writes.claim_tensors, ckpt_id, checks, durable=False,
                                                            raw=True),
                lookup=ctx.catalog.lookup)
            if written.pack_id:
                published.append(mf.pack_path(written.pack_id))
            table = mf.SlotTable.build(written.slots)
            sizes = {p: n for p, n in parent_manifest.pack_sizes.items() if n and p in table.packs} \
                if parent_manifest is not None else {}
            unknown = [p for p in table.packs if p not in sizes and p != written.pack_id]
            if unknown:
                sizes.update(ctx.catalog.pack_sizes(unknown))
            if written.pack_id:
                sizes[written.pack_id] = written.pack_size
            m = mf.Manifest(
                id=ckpt_id, run=run, epoch=epoch, step=step, created_at=now().isoformat(), parent=parent,
                metrics=metrics, skeleton=snap.skeleton, table=table, content_hash=table.content_hash(snap.skeleton),
                logical_size=snap.logical_size, new_bytes=written.pack_size, host=HOST, pid=os.getpid(),
                variant=variant, pack_sizes=sizes)
            lock.check()  # a lock removed as stale means a deletion may have run: do not publish
            publish(ctx, m)
            published.append(m.key)
        except BaseException:
            _abandon(ctx, ckpt_id, published)
            raise
        index(ctx, m, tags)
    return m


def publish(ctx: Context, m: mf.Manifest) -> None:
    """Step C: the manifest, create-only. Raises only while the checkpoint is not yet durable."""
    ctx.storage.put(m.key, mf.encode(m), create_only=True)


def index(ctx: Context, m: mf.Manifest, tags: tuple[str, ...] = (), pack_sizes: dict[str, int] | None = None) -> None:
    """Step D, for a durable manifest: retried once; if the index still fails the pending row is left for
    recovery (the next open, or the next claim of the same key) to roll forward."""
    try:
        try:
            ctx.catalog.write(writes.ingest, m, pack_sizes, tags, raw=True)
        except CkptError:
            ctx.catalog.write(writes.ingest, m, pack_sizes, tags, raw=True)
    except CkptError as exc:
        log.error("checkpoint %s is durable but the index failed twice (%s); it will be indexed when the "
                  "store is next opened", m.id[:12], exc)
        raise
    ctx.remember(m)
    for tag in tags:  # the index has the tags; these files only let reindex restore them
        try:
            refs.write(ctx.storage, "tags", tag, {"checkpoint": m.id})
        except CkptError as exc:
            log.warning("tag %r of %s is in the index but its ref file could not be written: %s", tag, m.id[:12], exc)


def _abandon(ctx: Context, ckpt_id: str, published: list[str]) -> None:
    """Undo a save that failed before its manifest: drop the pending row and claims, and our own pack."""
    if any(p.startswith("manifests/") for p in published):
        return  # durable: recovery will roll it forward
    try:
        for key in published:
            ctx.storage.delete(key)
        ctx.catalog.write(writes.release, ckpt_id, durable=False)
    except Exception as exc:  # pragma: no cover - the original error matters more; recovery cleans up
        log.warning("could not clean up failed save %s: %s", ckpt_id[:12], exc)


class Parts:
    """A save whose tensors several processes write (the ranks of a torch.distributed save).

    The process that begins it claims (run, epoch, step) and holds the shared store lock until it
    finishes or aborts, so no deletion can run while any part is being written; each process writes its
    own pack with :func:`write_part`; the beginner publishes the one manifest with :func:`finish_parts`."""

    def __init__(self, ctx: Context, checkpoint_id: str, parent: str | None, lock: Any) -> None:
        self.ctx, self.id, self.parent, self._lock = ctx, checkpoint_id, parent, lock

    def finish(self, m: mf.Manifest, tags: tuple[str, ...] = ()) -> None:
        """Steps C and D for the assembled manifest."""
        try:
            self._lock.check()
            publish(self.ctx, m)
        except BaseException:
            self.abort([])
            raise
        try:
            index(self.ctx, m, tags)
        finally:
            self._close()

    def abort(self, pack_ids: list[str]) -> None:
        """Undo a save that did not reach its manifest: its pending row, claims and the parts' packs."""
        try:
            if not any(self.ctx.storage.exists(mf.path_for(self.id, f)) for f in (2, 1)):
                _abandon(self.ctx, self.id, [mf.pack_path(p) for p in pack_ids])
        finally:
            self._close()

    def _close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        release(self.id)


def begin_parts(ctx: Context, *, run: str, epoch: int, step: int | None, variant: str = "", parent: str | None,
                default_parent: bool) -> Parts:
    ckpt_id = uuid.uuid4().hex
    hold(ckpt_id)
    lock = ctx.locks.shared(what="distributed save")
    try:
        ensure_current(ctx, lock.generation)
        if default_parent:
            parent = ctx.catalog.latest_id(run)
        begin(ctx, ckpt_id, run, epoch, step, variant, parent, False, 0)
    except BaseException:
        lock.release()
        release(ckpt_id)
        raise
    return Parts(ctx, ckpt_id, parent, lock)


def write_part(ctx: Context, checkpoint_id: str, snap: Snapshot, *, compress: bool) -> writer.Written:
    """One process's part of a multi-process save: its new tensors in a pack of its own. Slots another
    process of the same save writes come back in ``deferred`` (to be filled from that process's part)."""
    plan = writer.plan(snap, None)
    # Every new tensor is claimed: equal shards of several ranks (zero-filled states) are written once.
    begun = ctx.catalog.write(writes.begin_part, checkpoint_id, plan.lookups(), plan.claimable(snap, 0),
                              durable=False)
    return writer.write(
        ctx.storage, snap, plan, begun, compress=compress,
        claim_more=lambda checks: ctx.catalog.write(writes.claim_tensors, checkpoint_id, checks, durable=False),
        lookup=ctx.catalog.lookup)


__all__ = ["Context", "save", "publish", "index", "begin", "settle", "recover", "ensure_current", "hold", "release",
           "in_flight", "Parts", "begin_parts", "write_part", "HOST", "now"]
