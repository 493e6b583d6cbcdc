"""Recovery: finish or undo what dead writers left half done, from storage (run on every writable open).

A pending save whose writer is gone is rolled forward when its manifest is durable, else dropped with
its claims; a deletion whose process died is finished. Torch-free unless there is a manifest to check
(its skeleton is decoded through the allowlist before it is trusted).
"""

from __future__ import annotations

import logging

from ckpt import sync
from ckpt.catalog import writes
from ckpt.context import Context
from ckpt.errors import CorruptCheckpointError, MissingBlobError, UnsafeMetadataError

log = logging.getLogger("ckpt")


def settle(ctx: Context, checkpoint_id: str) -> bool:
    """A pending row whose writer is gone: roll it forward if its manifest is durable (returns True),
    else drop it. A manifest that is damaged or unsafe is never trusted: the row is dropped."""
    for fmt in (2, 1):
        try:
            m = sync.read_manifest(ctx.storage, checkpoint_id, fmt, structure=True)
            m.check_structure()
        except MissingBlobError:
            continue
        except (CorruptCheckpointError, UnsafeMetadataError) as exc:
            ctx.catalog.write(writes.release, checkpoint_id)
            log.warning("dropped unfinished save %s: its manifest is damaged or unsafe (%s)", checkpoint_id[:12], exc)
            return False
        ctx.catalog.write(writes.ingest, m)
        log.info("rolled forward save %s of run %r (its writer stopped after the manifest)", checkpoint_id[:12], m.run)
        return True
    ctx.catalog.write(writes.release, checkpoint_id)
    log.info("dropped unfinished save %s (its writer died before the manifest)", checkpoint_id[:12])
    return False


def recover(ctx: Context) -> int:
    """Finish or undo what dead writers left half done. Returns how many checkpoints it touched."""
    touched = 0
    for row in ctx.catalog.pending():
        if row.status == "pending" and writes.writer_gone(row.host, row.pid, row.created_at, row.id):
            settle(ctx, row.id)
            touched += 1
    leftovers = [row.id for row in ctx.catalog.pending() if row.status == "deleting"
                 and writes.writer_gone(row.host, row.pid, row.created_at)]
    if leftovers:  # format 1's deletions in progress: finish them under the new protocol
        from ckpt.deletion import delete_checkpoints
        delete_checkpoints(ctx, leftovers, free=False, statuses=("deleting",))
        touched += len(leftovers)
    return touched
