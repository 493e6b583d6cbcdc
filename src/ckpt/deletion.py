"""Deleting checkpoints and freeing what only they used, under the store's exclusive lock.

Order (docs/format.md): take the exclusive lock (no save is in flight); bump the deletion generation
(so every other index forgets what goes before trusting itself for dedup again); remove the
manifests and their tag refs; compute what the *remaining manifests on storage* need and delete the
removed checkpoints' packs that none needs; then update the index. Storage is freed before the index
is written to, so this works on a full disk; a crash at any point leaves manifests that are either
there (the checkpoint is intact) or gone (the index forgets it when it next syncs), and at worst
orphan packs that gc removes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ckpt import refs, sync
from ckpt.catalog import writes
from ckpt.catalog.schema import Checkpoint, Tag
from ckpt.errors import CkptError
from ckpt.format import manifest as mf

log = logging.getLogger("ckpt")


def delete_checkpoints(ctx: Any, ids: list[str], *, free: bool = True,
                       statuses: tuple[str, ...] = ("committed", "deleting")) -> dict[str, int]:
    """Remove checkpoints (ids another process already removed are skipped); returns the packs freed
    and their sizes."""
    with ctx.locks.exclusive(what="delete") as lock:
        known = ctx.catalog.statuses(ids)
        if ctx.catalog.generation() != lock.generation or any(known.get(cid) not in statuses for cid in ids):
            # Another process deleted meanwhile, or an id this index has not seen (another host saved
            # it): storage says what is there.
            sync.sync(ctx, generation=lock.generation, locked=True)
        return _delete_locked(ctx, lock, ids, free=free, statuses=statuses)


def delete_planned(ctx: Any, planner: Callable[[], list[str]], *, what: str = "prune") -> dict[str, int]:
    """Remove the checkpoints ``planner`` picks, deciding under the exclusive lock from an index just
    synchronised with storage (a retention policy must count what storage holds: a stale cache could
    take a checkpoint another host removed for the run's latest and delete the real one)."""
    with ctx.locks.exclusive(what=what) as lock:
        sync.sync(ctx, generation=lock.generation, locked=True)
        ids = planner()
        if not ids:
            return {}
        return _delete_locked(ctx, lock, ids, free=True, statuses=("committed",))


def _delete_locked(ctx: Any, lock: Any, ids: list[str], *, free: bool, statuses: tuple[str, ...]) -> dict[str, int]:
    from sqlalchemy import select
    with ctx.catalog.read() as s:
        rows = {r.id: r.format for r in s.execute(select(Checkpoint.id, Checkpoint.format)
                                                  .where(Checkpoint.id.in_(ids), Checkpoint.status.in_(statuses)))}
        tags = list(s.execute(select(Tag.name).where(Tag.checkpoint_id.in_(list(rows)))).scalars()) if rows else []
    doomed = [cid for cid in ids if cid in rows]
    if not doomed:
        return {}
    candidates: set[str] = set()
    for packs in ctx.catalog.packs_of(doomed).values():
        candidates |= packs
    try:  # readers see "deleting" at once; on a full disk this may fail: storage is freed first anyway
        ctx.catalog.write(writes.mark_deleting, doomed)
    except CkptError as exc:
        log.warning("could not mark %d checkpoint(s) as being deleted in the index (%s); deleting them anyway",
                    len(doomed), exc)
    generation = ctx.locks.bump(lock)
    for cid in doomed:
        for fmt in {rows[cid] or 2, 1, 2}:
            ctx.storage.delete(mf.path_for(cid, fmt))
        ctx.forget(cid)
    for tag in tags:
        refs.delete(ctx.storage, "tags", tag)
    freed: dict[str, int] = {}
    if free and candidates:
        try:
            live = sync.live_packs(ctx, exclude=set(doomed))
        except CkptError as exc:
            log.warning("checkpoints deleted, but no pack was freed: %s", exc)
            live = candidates
        sizes = ctx.catalog.pack_sizes(sorted(candidates - live))
        for pack in sorted(candidates - live):
            ctx.storage.delete(mf.pack_path(pack))
            freed[pack] = sizes.get(pack, 0)

    def txn(s) -> None:  # type: ignore[no-untyped-def]
        writes.forget_checkpoints(s, doomed)
        if freed:
            writes.forget_packs(s, list(freed))
        writes.set_meta(s, "generation", str(generation))
    ctx.catalog.write(txn)
    return freed
