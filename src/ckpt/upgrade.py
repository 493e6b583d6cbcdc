"""Moving a store forward: rewrite its format-1 manifests as format 2 (same ids, same packs).

New saves always write format 2, so a format-1 store upgrades itself as it is used; this rewrites the
old manifests too (faster listing and loading, the compact slot table). It runs under the exclusive
store lock: each manifest is written in format 2 create-only and indexed before its format-1 file is
removed, so a crash at any point leaves every checkpoint readable (in one format or the other).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ckpt import sync
from ckpt.catalog.schema import Checkpoint
from ckpt.errors import CkptError
from ckpt.format import manifest as mf
from ckpt.format import manifest_v1

log = logging.getLogger("ckpt")


@dataclass
class UpgradeReport:
    upgraded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint id, why)


def upgrade(ctx: Any, *, dry_run: bool = False) -> UpgradeReport:
    report = UpgradeReport()
    if dry_run:
        report.upgraded = sorted(cid for cid, fmt in sync.listing(ctx.storage).items() if fmt == 1)
        return report
    with ctx.locks.exclusive(what="upgrade") as lock:
        if ctx.catalog.generation() != lock.generation:
            sync.sync(ctx, generation=lock.generation)
        old = {e.name[:-len(mf.SUFFIX_V1)] for e in ctx.storage.list("manifests")
               if e.name.endswith(mf.SUFFIX_V1) and not e.name.startswith(".")}
        for cid in sorted(old):
            try:
                m1 = manifest_v1.loads(ctx.storage.read(mf.path_for(cid, 1), mf.MAX_MANIFEST_BYTES), expected_id=cid)
            except CkptError as exc:
                report.skipped.append((cid, str(exc)))
                continue
            sizes = ctx.catalog.pack_sizes(sorted(m1.packs))
            m2 = mf.Manifest(
                id=m1.id, run=m1.run, epoch=m1.epoch, step=m1.step, created_at=m1.created_at, parent=m1.parent,
                metrics=m1.metrics, skeleton=m1.skeleton, table=m1.table,
                content_hash=m1.table.content_hash(m1.skeleton), logical_size=m1.logical_size,
                new_bytes=m1.new_bytes, host=m1.host, pid=m1.pid, extra={**m1.extra, "upgraded_from": 1},
                variant=m1.variant, pack_sizes=sizes)
            try:
                ctx.storage.put(m2.key, mf.encode(m2), create_only=True)
            except FileExistsError:  # a previous upgrade wrote it and stopped: keep that one if it reads
                try:
                    mf.decode(ctx.storage.read(m2.key, mf.MAX_MANIFEST_BYTES), expected_id=cid)
                except CkptError as exc:
                    report.skipped.append((cid, f"a damaged format-2 copy is in the way ({exc})"))
                    continue
            ctx.catalog.write(_indexed_as_v2, cid, m2.content_hash)
            ctx.forget(cid)
            ctx.storage.delete(mf.path_for(cid, 1))
            report.upgraded.append(cid)
    return report


def _indexed_as_v2(s: Any, checkpoint_id: str, content_hash: str) -> None:
    from sqlalchemy import update
    s.execute(update(Checkpoint).where(Checkpoint.id == checkpoint_id).values(format=2, content_hash=content_hash))
