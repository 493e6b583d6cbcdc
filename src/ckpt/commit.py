"""The commit protocol: the one module that orders writes, and that finishes or undoes them after a crash.

Order of a save (docs/format.md states these as invariants):
  A. index: the checkpoint row is inserted as ``pending`` with a ref naming the pack it will write;
  B. storage: new tensors are streamed into that pack, published atomically (ckpt.persist);
  P. index: every reused pack is checked to be live and pinned with refs (else its tensors are rewritten);
  C. storage: the manifest is published create-only; from here on the checkpoint is durable;
  D. index: the row becomes ``committed`` with its tensors, metrics and tags, in one transaction.
A crash before C leaves a pending row (dropped on recovery) and maybe an orphan pack (gc removes it);
a crash between C and D is rolled forward on recovery from the manifest.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ckpt.blobs import BlobStore
from ckpt.blobs.local import pid_alive
from ckpt import persist
from ckpt.errors import (CkptError, CorruptCheckpointError, DuplicateCheckpointError, MissingBlobError,
                         StorageError, UnsafeMetadataError)
from ckpt.index.engine import Index
from ckpt.index.schema import Checkpoint, Metric, Pack, Ref, Run, Tag, TensorBlob
from ckpt.serialization import manifest as mf
from ckpt.snapshot import Snapshot

log = logging.getLogger("ckpt")
HOST = socket.gethostname()
#: A pending save or running run from another host is presumed dead after this long without news.
STALE_AFTER = timedelta(seconds=float(os.environ.get("CKPT_STALE_SECONDS", 6 * 3600)))
_CHUNK = 500  # bound on SQL IN-lists


def now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


#: Saves this process is running right now; a pending row of ours that is not here was abandoned.
_IN_FLIGHT: set[str] = set()


def writer_dead(host: str | None, pid: int | None, since: datetime, checkpoint_id: str | None = None) -> bool:
    if host == HOST and pid is not None:
        if pid == os.getpid() and checkpoint_id is not None:
            return checkpoint_id not in _IN_FLIGHT
        return not pid_alive(pid)
    return now() - as_utc(since) > STALE_AFTER


class Context:
    """What the protocol needs: storage, the index, and a small cache of immutable manifests."""

    def __init__(self, blobs: BlobStore, index: Index, cache_size: int = 8) -> None:
        self.blobs, self.index = blobs, index
        self._manifests: OrderedDict[str, mf.Manifest] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def manifest(self, checkpoint_id: str) -> mf.Manifest:
        with self._lock:
            m = self._manifests.get(checkpoint_id)
            if m is not None:
                self._manifests.move_to_end(checkpoint_id)
                return m
        m = mf.loads(self.blobs.read(mf.path_for(checkpoint_id), mf.MAX_MANIFEST_BYTES), expected_id=checkpoint_id)
        self.remember(m)
        return m

    def remember(self, m: mf.Manifest) -> None:
        with self._lock:
            self._manifests[m.id] = m
            while len(self._manifests) > self._cache_size:
                self._manifests.popitem(last=False)

    def forget(self, checkpoint_id: str) -> None:
        with self._lock:
            self._manifests.pop(checkpoint_id, None)


def _chunks(items: list, n: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def touch_run(session: Session, name: str, *, status: str | None = "running") -> Run:
    run = session.scalar(select(Run).where(Run.name == name))
    ts = now()
    if run is None:
        run = Run(name=name, status=status or "running", created_at=ts, updated_at=ts, heartbeat_at=ts,
                  host=HOST, pid=os.getpid())
        session.add(run)
        session.flush()
    elif status is not None:
        run.status, run.updated_at, run.heartbeat_at, run.host, run.pid = status, ts, ts, HOST, os.getpid()
    return run


#: The step key of a checkpoint saved without a step: after every stepped checkpoint of its epoch, so
#: RUN@EPOCH means the epoch-end checkpoint when there is one. (NULLs never collide in UNIQUE, hence a key.)
NO_STEP = 2**62


def step_key(step: int | None) -> int:
    return NO_STEP if step is None else step


def _latest_id(session: Session, run_id: int) -> str | None:
    return session.scalar(select(Checkpoint.id).where(Checkpoint.run_id == run_id,
                                                      Checkpoint.status == "committed")
                          .order_by(Checkpoint.seq.desc()).limit(1))


def claim(session: Session, ckpt_id: str, run_name: str, epoch: int, step: int | None,
          parent: str | None, default_parent: bool, logical_size: int, blobs: BlobStore) -> str | None:
    """Step A: claim (run, epoch, step) with a pending row (a dead writer's claim is taken over).

    Returns the parent id: ``parent``, or with ``default_parent`` the run's latest committed checkpoint.
    Writers other than :func:`save` (the torch.distributed integration) use this too.
    """
    run = touch_run(session, run_name)
    key = step_key(step)
    clash = session.scalar(select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.epoch == epoch,
                                                    Checkpoint.step_key == key))
    if clash is not None and clash.status == "pending" and \
            writer_dead(clash.host, clash.pid, clash.created_at, clash.id):
        raise DeadClaim(clash.id)  # settled in a transaction of its own (see run_claim), then retried
    if clash is not None:
        what = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        state = {"committed": "already has", "pending": "is being saved by another process with",
                 "deleting": "is deleting"}.get(clash.status, "has")
        raise DuplicateCheckpointError(
            f"run {run_name!r} {state} a checkpoint for {what} ({clash.id[:12]}); save under another "
            f"epoch/step, or delete it first with store.delete({run_name + '@' + str(epoch)!r})")
    if default_parent:
        parent = _latest_id(session, run.id)
    session.add(Checkpoint(id=ckpt_id, run_id=run.id, epoch=epoch, step=step, step_key=key,
                           status="pending", created_at=now(), parent_id=parent,
                           logical_size=logical_size, new_bytes=0, host=HOST, pid=os.getpid()))
    session.flush()
    return parent


class DeadClaim(Exception):
    """Internal: a dead writer's claim blocks (run, epoch, step); settle it first, then claim again."""

    def __init__(self, checkpoint_id: str) -> None:
        super().__init__(checkpoint_id)
        self.checkpoint_id = checkpoint_id


def run_claim(index: Index, blobs: BlobStore, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a claiming transaction; a dead writer's claim in the way is first rolled forward (if its
    manifest is durable: the new claim then fails as a duplicate) or dropped, in its own transaction."""
    for _ in range(5):
        try:
            return index.write_txn(fn, *args, **kwargs)
        except DeadClaim as dead:
            index.write_txn(_settle_by_id, blobs, dead.checkpoint_id)
    return index.write_txn(fn, *args, **kwargs)


def _settle_by_id(session: Session, blobs: BlobStore, checkpoint_id: str) -> None:
    row = session.get(Checkpoint, checkpoint_id)
    if row is not None and row.status == "pending":  # another process may have settled it meanwhile
        settle_dead_claim(session, blobs, row)


def _begin(session: Session, ckpt_id: str, run_name: str, epoch: int, step: int | None,
           parent: str | None, default_parent: bool, snap: Snapshot, new_pack: str,
           blobs: BlobStore) -> str | None:
    """Step A of a save: the claim, plus a ref naming the pack it is about to write, so no gc can take
    that pack before the refs name its tensors."""
    parent = claim(session, ckpt_id, run_name, epoch, step, parent, default_parent, snap.logical_size, blobs)
    session.add(Ref(checkpoint_id=ckpt_id, hash="", pack_id=new_pack))
    return parent


def _pin(session: Session, ckpt_id: str, slots: list[mf.Slot], new_pack: str) -> set[str]:
    """Record which pack every tensor is read from; returns reused packs that gc took meanwhile."""
    reused = sorted({s.pack for s in slots} - {new_pack})
    live: set[str] = set()
    for chunk in _chunks(reused):
        live |= set(session.scalars(select(Pack.id).where(Pack.id.in_(chunk), Pack.status == "live")))
    dead = set(reused) - live
    if dead:
        return dead
    refs: dict[str, str] = {}
    for s in slots:
        refs.setdefault(s.hash, s.pack)
    rows = [{"checkpoint_id": ckpt_id, "hash": h, "pack_id": p} for h, p in refs.items()]
    for chunk in _chunks(rows, 2000):
        session.execute(insert(Ref), chunk)
    return set()


def save(ctx: Context, *, run: str, epoch: int, snap: Snapshot, metrics: dict[str, float],
         step: int | None, parent: str | None, default_parent: bool, tags: tuple[str, ...],
         compress: bool, write_tag_ref) -> mf.Manifest:  # type: ignore[no-untyped-def]
    """Run steps A-D for one snapshot; returns the committed manifest."""
    ckpt_id = uuid.uuid4().hex
    pack_id = uuid.uuid4().hex
    with in_flight(ckpt_id):
        return _save(ctx, ckpt_id, pack_id, run=run, epoch=epoch, snap=snap, metrics=metrics, step=step,
                     parent=parent, default_parent=default_parent, tags=tags, compress=compress,
                     write_tag_ref=write_tag_ref)


def hold(checkpoint_id: str) -> None:
    """Mark a claim as being worked on by this process, so recovery here does not take it for abandoned."""
    _IN_FLIGHT.add(checkpoint_id)


def release(checkpoint_id: str) -> None:
    _IN_FLIGHT.discard(checkpoint_id)


@contextmanager
def in_flight(checkpoint_id: str) -> Iterator[None]:
    hold(checkpoint_id)
    try:
        yield
    finally:
        release(checkpoint_id)


def _save(ctx: Context, ckpt_id: str, pack_id: str, *, run: str, epoch: int, snap: Snapshot,
          metrics: dict[str, float], step: int | None, parent: str | None, default_parent: bool,
          tags: tuple[str, ...], compress: bool, write_tag_ref) -> mf.Manifest:  # type: ignore[no-untyped-def]
    parent = run_claim(ctx.index, ctx.blobs, _begin, ckpt_id, run, epoch, step, parent, default_parent, snap,
                       pack_id, ctx.blobs, durable=False)
    published: list[str] = []
    try:
        parent_manifest = None
        if parent is not None:
            try:
                parent_manifest = ctx.manifest(parent)
            except CkptError as exc:  # only an optimisation: a damaged parent just means no reuse
                log.warning("not reusing tensors of parent %s: %s", parent[:12], exc)
        avoid: set[str] = set()
        for _attempt in range(3):
            written = persist.write_new(ctx.blobs, ctx.index, snap, parent_manifest, pack_id, compress, avoid)
            if written.pack_size:
                published.append(mf.pack_path(pack_id))  # step B done
            dead = ctx.index.write_txn(_pin, ckpt_id, written.slots, pack_id, durable=False)
            if not dead:
                break
            avoid |= dead  # gc removed a pack we meant to reuse: write those tensors ourselves
            pack_id = uuid.uuid4().hex
        else:
            raise StorageError("packs this save wanted to reuse kept being garbage-collected; retry the save")
        manifest = mf.Manifest(
            id=ckpt_id, run=run, epoch=epoch, step=step, created_at=now().isoformat(), parent=parent,
            metrics=metrics, skeleton=snap.skeleton, slots=tuple(written.slots), leaves=tuple(snap.leaves),
            content_hash=mf.content_hash(snap.skeleton, written.slots), logical_size=snap.logical_size,
            new_bytes=written.pack_size, host=HOST, pid=os.getpid())
        sizes = {pack_id: written.pack_size} if written.pack_size else {}
        publish(ctx, manifest, sizes, tags, write_tag_ref, published)
    except BaseException:
        _abandon(ctx, ckpt_id, published)
        raise
    return manifest


def publish(ctx: Context, manifest: mf.Manifest, pack_sizes: dict[str, int], tags: tuple[str, ...],
            write_tag_ref, published: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Steps C and D for a manifest whose packs are durable and pinned. It raises only while the manifest
    is not yet published (the caller then abandons the claim); once it is, the checkpoint is durable and
    a failing index is retried once, then left pending for recovery to roll forward."""
    ctx.blobs.write(mf.path_for(manifest.id), [mf.dumps(manifest)], exclusive=True)  # step C
    if published is not None:
        published.append(mf.path_for(manifest.id))
    # Step D: ingest is idempotent (recovery uses it too), so try once more. If the index still fails,
    # the pending row is no longer in flight and the next open (or a save of the same epoch) rolls it
    # forward.
    try:
        try:
            ctx.index.write_txn(ingest, manifest, pack_sizes, tags)
        except CkptError:
            ctx.index.write_txn(ingest, manifest, pack_sizes, tags)
    except CkptError as exc:
        log.error("checkpoint %s is durable but the index failed twice (%s); it will be indexed when the "
                  "store is next opened", manifest.id[:12], exc)
        raise
    ctx.remember(manifest)
    for tag in tags:  # the index has the tags; these files only let reindex restore them
        try:
            write_tag_ref(tag, manifest.id)
        except CkptError as exc:
            log.warning("tag %r of %s is in the index but its ref file could not be written: %s",
                        tag, manifest.id[:12], exc)


def _abandon(ctx: Context, ckpt_id: str, published: list[str]) -> None:
    """Undo a save that failed before its manifest: drop the pending row and our own pack."""
    if mf.path_for(ckpt_id) in published:
        return  # durable: recovery will roll it forward
    try:
        for rel in published:
            ctx.blobs.delete(rel)
        ctx.index.write_txn(lambda s: s.execute(delete(Checkpoint).where(Checkpoint.id == ckpt_id,
                                                                         Checkpoint.status == "pending")))
    except Exception as exc:  # pragma: no cover - the original error matters more; recovery cleans up
        log.warning("could not clean up failed save %s: %s", ckpt_id[:12], exc)


def ingest(session: Session, m: mf.Manifest, pack_sizes: dict[str, int], tags: Iterable[str] = ()) -> Checkpoint:
    """Make the index agree with a manifest (step D, recovery and reindex all come through here)."""
    run = touch_run(session, m.run, status=None)
    row = session.get(Checkpoint, m.id)
    created = datetime.fromisoformat(m.created_at) if m.created_at else now()
    if row is None:
        row = Checkpoint(id=m.id, run_id=run.id, epoch=m.epoch, step=m.step,
                         step_key=step_key(m.step), status="pending", created_at=created,
                         parent_id=m.parent, logical_size=m.logical_size, new_bytes=m.new_bytes,
                         host=m.host, pid=m.pid)
        session.add(row)
        session.flush()
    for pack_id, size in pack_sizes.items():
        if session.get(Pack, pack_id) is None:
            session.add(Pack(id=pack_id, size=size, status="live", created_at=now()))
    session.flush()
    packs_here = sorted(m.packs)
    existing = set(session.execute(select(TensorBlob.hash, TensorBlob.pack_id)
                                   .where(TensorBlob.pack_id.in_(packs_here))).all()) if packs_here else set()
    live = set(session.scalars(select(Pack.id).where(Pack.id.in_(packs_here)))) if packs_here else set()
    new_blobs, refs = [], {}
    for s in m.slots:
        refs.setdefault(s.hash, s.pack)
        if s.pack in live and (s.hash, s.pack) not in existing:
            existing.add((s.hash, s.pack))
            new_blobs.append({"hash": s.hash, "pack_id": s.pack, "offset": s.offset, "length": s.length,
                              "nbytes": s.nbytes, "codec": s.codec, "dtype": s.dtype,
                              "shape": ",".join(map(str, s.shape))})
    for chunk in _chunks(new_blobs, 2000):
        session.execute(insert(TensorBlob), chunk)
    session.execute(delete(Ref).where(Ref.checkpoint_id == m.id))
    ref_rows = [{"checkpoint_id": m.id, "hash": h, "pack_id": p} for h, p in refs.items()]
    for chunk in _chunks(ref_rows, 2000):
        session.execute(insert(Ref), chunk)
    session.execute(delete(Metric).where(Metric.checkpoint_id == m.id))
    for pos, (name, value) in enumerate(m.metrics.items()):
        session.add(Metric(checkpoint_id=m.id, name=name, position=pos,
                           value=value if value == value and abs(value) != float("inf") else None,
                           raw=repr(value)))
    for tag in tags:
        session.execute(delete(Tag).where(Tag.name == tag))
        session.add(Tag(name=tag, checkpoint_id=m.id, created_at=now()))
    row.status = "committed"
    row.content_hash, row.new_bytes, row.logical_size = m.content_hash, m.new_bytes, m.logical_size
    if row.seq is None:
        row.seq = (session.scalar(select(func.max(Checkpoint.seq))) or 0) + 1
    session.flush()
    return row


def settle_dead_claim(session: Session, blobs: BlobStore, row: Checkpoint) -> bool:
    """A pending row whose writer is gone: roll it forward if its manifest is durable (returns True),
    else drop it. A manifest that is damaged or unsafe is never trusted: the row is dropped."""
    path = mf.path_for(row.id)
    try:
        m = mf.loads(blobs.read(path, mf.MAX_MANIFEST_BYTES), expected_id=row.id)
    except MissingBlobError:
        session.execute(delete(Checkpoint).where(Checkpoint.id == row.id))
        log.info("dropped unfinished save %s (writer pid %s died before its manifest)", row.id[:12], row.pid)
        return False
    except (CorruptCheckpointError, UnsafeMetadataError) as exc:
        session.execute(delete(Checkpoint).where(Checkpoint.id == row.id))
        log.warning("dropped unfinished save %s: its manifest %s is damaged or unsafe (%s)", row.id[:12], path, exc)
        return False
    sizes = {}
    for pack_id in m.packs:
        try:
            sizes[pack_id] = blobs.size(mf.pack_path(pack_id))
        except CkptError:
            pass
    ingest(session, m, sizes)
    log.info("rolled forward save %s of run %r (its writer stopped after the manifest)", row.id[:12], m.run)
    return True


def recover(ctx: Context) -> int:
    """Finish or undo what dead writers left half done. Returns how many checkpoints it touched."""
    with ctx.index.read() as s:
        if not s.scalar(select(func.count()).select_from(Checkpoint)
                        .where(Checkpoint.status.in_(("pending", "deleting")))):
            return 0

    def txn(session: Session) -> int:
        touched = 0
        rows = session.scalars(select(Checkpoint).where(Checkpoint.status.in_(("pending", "deleting")))).all()
        for row in rows:
            if not writer_dead(row.host, row.pid, row.created_at, row.id):
                continue
            touched += 1
            if row.status == "deleting":
                ctx.blobs.delete(mf.path_for(row.id))
                session.execute(delete(Checkpoint).where(Checkpoint.id == row.id))
                continue
            settle_dead_claim(session, ctx.blobs, row)
        return touched

    return ctx.index.write_txn(txn)
