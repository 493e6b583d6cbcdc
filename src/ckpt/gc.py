"""Garbage collection: delete packs no manifest on storage refers to, under the store's exclusive lock.

Liveness comes from storage, never from the index alone (docs/format.md): the manifests listed on
storage are every checkpoint there is, and a pack is garbage only when none of them names it. The
exclusive lock means no save is in flight (a save holds a shared lock from before it chooses what to
reuse until its manifest is published), so a pack written by a save that has not published yet cannot
be here unless its writer is dead. The grace period is a second guard for writers that take no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ckpt import sync
from ckpt.catalog import writes
from ckpt.format import manifest as mf
from ckpt.storage.base import pid_alive, temp_owner_pid

SUFFIX = ".safetensors"


@dataclass
class GcReport:
    packs: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    temp_files: list[str] = field(default_factory=list)
    dry_run: bool = False


def collect(ctx: Any, *, dry_run: bool, grace_seconds: float) -> GcReport:
    """Remove unreferenced packs older than the grace period, then dead writers' temp files and uploads."""
    if dry_run:
        return _collect(ctx, None, dry_run=True, grace_seconds=grace_seconds)
    with ctx.locks.exclusive(what="gc") as lock:
        if ctx.catalog.generation() != lock.generation:
            sync.sync(ctx, generation=lock.generation, locked=True)
        return _collect(ctx, lock, dry_run=False, grace_seconds=grace_seconds)


def _collect(ctx: Any, lock: Any, *, dry_run: bool, grace_seconds: float) -> GcReport:
    report = GcReport(dry_run=dry_run)
    cutoff = time.time() - grace_seconds
    files = {e.name[:-len(SUFFIX)]: e for e in ctx.storage.list("packs")
             if e.name.endswith(SUFFIX) and not e.name.startswith(".")}
    live = sync.live_packs(ctx)  # raises (deleting nothing) when a manifest cannot be read
    doomed = sorted(p for p, e in files.items() if p not in live and (e.mtime is None or e.mtime < cutoff))
    if doomed and not dry_run:
        generation = ctx.locks.bump(lock)
    for p in doomed:
        report.packs.append(p)
        report.bytes_freed += files[p].size
        if not dry_run:
            ctx.storage.delete(mf.pack_path(p))
    if not dry_run:
        gone = [p for p in ctx.catalog.packs() if p not in files or p in doomed]

        def txn(s) -> None:  # type: ignore[no-untyped-def]
            if gone:
                writes.forget_packs(s, gone)
            if doomed:
                writes.set_meta(s, "generation", str(generation))
        if gone or doomed:
            ctx.catalog.write(txn)
    for key in ctx.storage.abort_stale_uploads(grace_seconds, dry_run=dry_run):  # killed multipart uploads
        report.temp_files.append(f"upload:{key}")
    for directory in ("packs", "manifests", "refs/tags", "refs/runs", ""):
        for e in ctx.storage.list(directory):
            pid = temp_owner_pid(e.name)
            if pid is None:
                continue
            dead = not pid_alive(pid) if ctx.storage.is_local else (e.mtime is not None and e.mtime < cutoff)
            if dead:
                rel = f"{directory}/{e.name}" if directory else e.name
                report.temp_files.append(rel)
                report.bytes_freed += e.size
                if not dry_run:
                    ctx.storage.delete(rel)
    return report
