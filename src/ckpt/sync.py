"""Keeping the index a faithful cache of storage, and deciding liveness from storage alone.

The listing of ``manifests/`` is the truth about which checkpoints exist. The index caches what each
manifest says (manifests are immutable, so a cached fact about one never goes stale: only its
existence can change). :func:`sync` brings the index up to date with a listing; :func:`live_packs`
answers "which packs does some manifest on storage need", reading any manifest the index does not
know. Nothing here deletes data; deleting is done by gc and deletion under the exclusive lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ckpt import refs
from ckpt.catalog import writes
from ckpt.catalog.schema import Checkpoint, Metric, Pack, Run, Tag, TensorBlob, CheckpointPack, Claim
from ckpt.errors import CkptError, CorruptCheckpointError, MissingBlobError
from ckpt.format import manifest as mf
from ckpt.format import manifest_v1

log = logging.getLogger("ckpt")
_MAX_INGEST = 500  # manifests ingested per transaction


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    packs_removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (manifest key, why)


def listing(storage: Any) -> dict[str, int]:
    """Every manifest on storage: checkpoint id -> format (a format-2 file wins over a format-1 one)."""
    out: dict[str, int] = {}
    for e in storage.list("manifests"):
        parsed = mf.id_of(e.name)
        if parsed is not None:
            cid, fmt = parsed
            out[cid] = max(out.get(cid, 0), fmt)
    return out


def read_manifest(storage: Any, checkpoint_id: str, fmt: int, *, structure: bool = False) -> mf.Manifest:
    """A manifest from storage, validated. The skeleton is not unpickled unless asked (torch-free)."""
    data = storage.read(mf.path_for(checkpoint_id, fmt), mf.MAX_MANIFEST_BYTES)
    if fmt == 1 and not structure:
        return manifest_v1.loads(data, expected_id=checkpoint_id, structure=False)
    return mf.decode(data, expected_id=checkpoint_id)


def _key(m: mf.Manifest) -> tuple:
    return (m.run, m.epoch, writes.step_key(m.step), m.variant)


def sync(ctx: Any, *, generation: int | None = None, packs: bool = True, locked: bool = False) -> SyncReport:
    """Make the index agree with storage: index manifests it lacks, forget checkpoints whose manifest
    is gone and (``packs``) packs that are gone; record ``generation`` (read before this call) as seen.

    The index is read *before* storage is listed: a checkpoint committed or a pack written meanwhile
    is then merely not seen yet, never taken for deleted (manifests and packs never come back once
    gone). Only a caller that holds a store lock (``locked``) knows no deletion ran during the listing;
    without one, an exclusive holder may be half way through deleting under ``generation`` (it moves
    the generation first, then deletes), so only ``generation - 1`` is recorded as seen, and the next
    save syncs again under its lock before it trusts the index for dedup."""
    report = SyncReport()
    indexed = ctx.catalog.committed()
    pending = {row.id for row in ctx.catalog.pending()}
    known_packs = list(ctx.catalog.packs()) if packs else []
    on_storage = listing(ctx.storage)
    gone = [cid for cid in indexed if cid not in on_storage]
    new = [cid for cid in on_storage if cid not in indexed]
    manifests = []
    for cid in new:
        if cid in pending:
            continue  # a save in flight (or a dead one: recovery settles it)
        try:
            m = read_manifest(ctx.storage, cid, on_storage[cid], structure=True)
            m.check_structure()  # an unsafe or damaged skeleton is never indexed (it would be "latest")
            manifests.append(m)
        except MissingBlobError:
            continue  # deleted since the listing
        except CkptError as exc:
            report.skipped.append((mf.path_for(cid, on_storage[cid]), str(exc)))
            log.warning("index: skipped manifest %s: %s", mf.path_for(cid, on_storage[cid]), exc)
    manifests.sort(key=lambda m: (m.created_at, m.id))
    missing_packs: list[str] = []
    if packs:
        present = {e.name[:-len(".safetensors")] for e in ctx.storage.list("packs")
                   if e.name.endswith(".safetensors") and not e.name.startswith(".")}
        missing_packs = [p for p in known_packs if p not in present]

    def txn(s) -> None:  # type: ignore[no-untyped-def]
        if gone:
            writes.forget_checkpoints(s, gone)
        if missing_packs:
            writes.forget_packs(s, missing_packs)
        if generation is not None:
            record_generation(s, generation, locked=locked)

    ctx.catalog.write(txn)
    report.removed, report.packs_removed = len(gone), len(missing_packs)
    for i in range(0, len(manifests), _MAX_INGEST):
        report.added += ctx.catalog.write(_ingest_batch, manifests[i:i + _MAX_INGEST], report)
    return report


def record_generation(s: Any, generation: int, *, locked: bool) -> None:
    """Record the deletion generation the index has caught up with (see :func:`sync`): ``generation``
    itself under a store lock; without one ``generation - 1``, and never lower than what is recorded."""
    if not locked:
        try:
            current = int(writes.get_meta(s, "generation") or -1)
        except ValueError:
            current = -1
        generation = max(current, generation - 1)
    writes.set_meta(s, "generation", str(generation))


def _ingest_batch(s: Any, manifests: list[mf.Manifest], report: SyncReport) -> int:
    from sqlalchemy import select
    n = 0
    for m in manifests:
        if s.get(Checkpoint, m.id) is not None:
            continue
        run = s.scalar(select(Run).where(Run.name == m.run))
        if run is not None:
            clash = s.scalar(select(Checkpoint.id).where(
                Checkpoint.run_id == run.id, Checkpoint.epoch == m.epoch,
                Checkpoint.step_key == writes.step_key(m.step), Checkpoint.variant == m.variant))
            if clash is not None:
                report.skipped.append((m.key, f"{m.run}@{m.epoch} step {m.step} already has checkpoint {clash[:12]}"))
                log.warning("index: skipped manifest %s: %s@%s step %s already has checkpoint %s (`ckpt verify` "
                            "lists it as unindexed)", m.key, m.run, m.epoch, m.step, clash[:12])
                continue
        if run is None:
            writes.touch_run(s, m.run, status=None).status = "completed"
        writes.ingest(s, m)
        n += 1
    return n


def rebuild(ctx: Any, generation: int | None = None) -> int:
    """Replace the index's contents with what storage says (``ckpt reindex``): checkpoints, lineage,
    metrics, tags and run objectives. The caller holds the store's exclusive lock, so no save is in
    flight: pending rows and claims left in the index are dead and go too."""
    def clear(s) -> None:  # type: ignore[no-untyped-def]
        from sqlalchemy import delete
        for table in (Claim, CheckpointPack, TensorBlob, Metric, Tag, Checkpoint, Pack, Run):
            s.execute(delete(table))
    ctx.catalog.write(clear)
    report = sync(ctx, generation=generation, packs=False, locked=True)
    restore_refs(ctx)
    return report.added


def restore_refs(ctx: Any) -> None:
    """Tags, run objectives and statuses from their ref files on storage, and pack sizes from the listing."""
    sizes = {e.name[:-len(".safetensors")]: e.size for e in ctx.storage.list("packs")
             if e.name.endswith(".safetensors") and not e.name.startswith(".")}
    tag_docs = refs.read_all(ctx.storage, "tags")
    run_docs = refs.read_all(ctx.storage, "runs")

    def finish(s) -> None:  # type: ignore[no-untyped-def]
        from sqlalchemy import select, update
        for pack_id, size in sizes.items():
            s.execute(update(Pack).where(Pack.id == pack_id, Pack.size == 0).values(size=size))
        for doc in run_docs:
            run = writes.touch_run(s, doc["name"], status=None)
            if doc.get("objective") and doc.get("mode") in ("max", "min"):
                run.objective_metric, run.objective_mode = str(doc["objective"])[:256], doc["mode"]
            if doc.get("status") in ("completed", "failed", "interrupted"):
                run.status = doc["status"]
        known = set(s.scalars(select(Checkpoint.id).where(Checkpoint.status == "committed")))
        for doc in tag_docs:
            if doc.get("checkpoint") in known:
                writes.tag(s, doc["name"], doc["checkpoint"])
    ctx.catalog.write(finish)


def live_packs(ctx: Any, *, exclude: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """Every pack some manifest on storage refers to (manifests in ``exclude`` aside).

    The listing says which manifests exist; what each needs comes from the index's cache of it or,
    for one the index does not know, from the manifest itself. A manifest that cannot be read makes
    this raise: nothing may be deleted while what it needs is unknown."""
    on_storage = {cid: fmt for cid, fmt in listing(ctx.storage).items() if cid not in exclude}
    cached = ctx.catalog.packs_of(list(on_storage))
    live: set[str] = set()
    for cid, fmt in on_storage.items():
        packs = cached.get(cid)
        if packs is None:
            try:
                packs = read_manifest(ctx.storage, cid, fmt).packs
            except CkptError as exc:
                raise CorruptCheckpointError(
                    f"manifest {mf.path_for(cid, fmt)} cannot be read ({exc}), so which packs it needs is unknown; "
                    f"nothing was deleted. Run `ckpt verify`, then restore or remove that manifest") from exc
        live |= packs
    return live
