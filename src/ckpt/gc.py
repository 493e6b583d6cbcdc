"""Garbage collection: delete packs no checkpoint refers to, safely while other processes save.

A save pins every pack it uses with ``refs`` rows *before* it writes (commit step A), so a pack without
refs is unreachable unless a save has not reached step A yet, and such a save only writes packs with fresh
random ids. The grace period covers packs being written right now (their refs may name them already,
but files younger than the grace period are never touched anyway).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import delete, select

from ckpt.blobs.local import pid_alive, temp_owner_pid
from ckpt.commit import Context
from ckpt.index.schema import Pack, Ref
from ckpt.serialization import manifest as mf

SUFFIX = ".safetensors"


@dataclass
class GcReport:
    packs: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    temp_files: list[str] = field(default_factory=list)
    dry_run: bool = False


def collect(ctx: Context, *, dry_run: bool, grace_seconds: float, only: set[str] | None = None) -> GcReport:
    """Remove unreferenced packs older than the grace period (or exactly the packs in ``only``, which
    the caller knows were referenced by checkpoints it just deleted), then dead writers' temp files."""
    report = GcReport(dry_run=dry_run)
    cutoff = time.time() - grace_seconds
    files = {e.name[:-len(SUFFIX)]: e for e in ctx.blobs.list("packs")
             if e.name.endswith(SUFFIX) and not e.name.startswith(".")}
    with ctx.index.read() as s:
        referenced = set(s.scalars(select(Ref.pack_id).distinct()))
        rows = set(s.scalars(select(Pack.id)))
    if only is not None:
        candidates = [p for p in only if p not in referenced]
    else:
        candidates = [p for p in (set(files) | rows) - referenced
                      if p not in files or files[p].mtime is None or files[p].mtime < cutoff]

    def mark(s) -> list[str]:  # type: ignore[no-untyped-def]
        still = set(s.scalars(select(Ref.pack_id).where(Ref.pack_id.in_(candidates)).distinct()))
        doomed = [p for p in candidates if p not in still]
        if not dry_run and doomed:
            for p in doomed:
                row = s.get(Pack, p)
                if row is not None:
                    row.status = "deleting"  # new saves stop reusing its tensors from here on
        return doomed

    doomed = ctx.index.write_txn(mark) if candidates and not dry_run else list(candidates)
    for p in sorted(doomed):
        report.packs.append(p)
        report.bytes_freed += files[p].size if p in files else 0
        if not dry_run:
            ctx.blobs.delete(mf.pack_path(p))
    if doomed and not dry_run:
        ctx.index.write_txn(lambda s: s.execute(delete(Pack).where(Pack.id.in_(doomed), Pack.status == "deleting")))
    for key in ctx.blobs.abort_stale_uploads(grace_seconds, dry_run=dry_run):  # killed multipart uploads
        report.temp_files.append(f"upload:{key}")
    for directory in ("packs", "manifests", "refs/tags", "refs/runs", ""):
        for e in ctx.blobs.list(directory):
            pid = temp_owner_pid(e.name)
            if pid is None:
                continue
            dead = not pid_alive(pid) if ctx.blobs.is_local else (e.mtime is not None and e.mtime < cutoff)
            if dead:
                rel = f"{directory}/{e.name}" if directory else e.name
                report.temp_files.append(rel)
                report.bytes_freed += e.size
                if not dry_run:
                    ctx.blobs.delete(rel)
    return report
