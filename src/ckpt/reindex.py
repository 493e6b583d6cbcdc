"""Rebuild the index from storage alone: manifests, pack sizes, tag and run refs."""

from __future__ import annotations

import logging

from sqlalchemy import delete, func, select

from ckpt import refs
from ckpt.commit import Context, ingest, now, step_key, touch_run
from ckpt.errors import CkptError
from ckpt.index.schema import Checkpoint, Metric, Pack, Ref, Run, Tag, TensorBlob
from ckpt.loading import read_manifest

log = logging.getLogger("ckpt")


def rebuild(ctx: Context, *, only_if_empty: bool = False) -> int:
    """Replace the index's contents with what storage says. With ``only_if_empty`` nothing happens unless
    the index has no checkpoint row at all, checked inside the same write transaction (another process may
    be saving its first checkpoint right now)."""
    manifests = []
    for e in ctx.blobs.list("manifests"):
        if not e.name.endswith(".json") or e.name.startswith("."):
            continue
        try:
            manifests.append(read_manifest(ctx.blobs, e.name[:-5]))
        except CkptError as exc:
            log.warning("reindex skipped manifest %s: %s", e.name, exc)
    manifests.sort(key=lambda m: (m.created_at, m.id))
    seen: set[tuple[str, int, int]] = set()
    unique = []
    for m in manifests:  # two manifests for one (run, epoch, step): keep the first, as the index would
        key = (m.run, m.epoch, step_key(m.step))
        if key in seen:
            log.warning("reindex skipped manifest %s: %s@%s step %s already has an earlier checkpoint "
                        "(`ckpt verify` lists it as unindexed)", m.id[:12], m.run, m.epoch, m.step)
            continue
        seen.add(key)
        unique.append(m)
    manifests = unique
    pack_sizes = {e.name[:-len(".safetensors")]: e.size for e in ctx.blobs.list("packs")
                  if e.name.endswith(".safetensors") and not e.name.startswith(".")}
    tag_docs = refs.read_all(ctx.blobs, "tags")
    run_docs = refs.read_all(ctx.blobs, "runs")

    def txn(s) -> int:  # type: ignore[no-untyped-def]
        if only_if_empty and s.scalar(select(func.count()).select_from(Checkpoint)):
            return 0
        for table in (Ref, TensorBlob, Metric, Tag, Checkpoint, Pack, Run):
            s.execute(delete(table))
        for m in manifests:
            ingest(s, m, {p: pack_sizes[p] for p in m.packs if p in pack_sizes})
            s.get(Checkpoint, m.id).run.status = "completed"
        s.flush()
        for doc in run_docs:
            run = touch_run(s, doc["name"], status=None)
            if doc.get("objective") and doc.get("mode") in ("max", "min"):
                run.objective_metric, run.objective_mode = str(doc["objective"]), doc["mode"]
            if doc.get("status") in ("completed", "failed", "interrupted"):
                run.status = doc["status"]
        known = {m.id for m in manifests}
        for doc in tag_docs:
            if doc.get("checkpoint") in known:
                s.add(Tag(name=doc["name"], checkpoint_id=doc["checkpoint"], created_at=now()))
        return len(manifests)

    return ctx.index.write_txn(txn)
