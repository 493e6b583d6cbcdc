"""Read-only queries: checkpoints, runs, lineage and what deleting would free. Each takes a session."""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from ckpt.catalog.schema import Checkpoint, CheckpointPack, Metric, Pack, Run, Tag
from ckpt.catalog.selectors import Resolver
from ckpt.metrics import check_mode, resolve_mode
from ckpt.records import CheckpointInfo, RunInfo

#: What a host calls itself in locks, claims and rows (CKPT_HOST lets tests play two hosts on one machine).
HOST = os.environ.get("CKPT_HOST") or socket.gethostname()
#: A pending save or running run from another host is presumed dead after this long without news.
STALE_AFTER = timedelta(seconds=float(os.environ.get("CKPT_STALE_SECONDS", 6 * 3600)))


def now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_gone(host: str | None, pid: int | None, since: datetime) -> bool:
    """Whether the process that wrote a row is gone: same host and no such pid, or silent too long."""
    if host == HOST and pid is not None:
        return not pid_alive(pid)
    return now() - as_utc(since) > STALE_AFTER


def info(row: Checkpoint) -> CheckpointInfo:
    return CheckpointInfo(
        id=row.id, run=row.run.name, epoch=row.epoch, step=row.step,
        metrics={m.name: float(m.raw) for m in row.metrics}, content_hash=row.content_hash or "",
        parent=row.parent_id, created_at=as_utc(row.created_at), logical_size=row.logical_size,
        new_bytes=row.new_bytes, tags=tuple(sorted(t.name for t in row.tags)), status=row.status,
        variant=row.variant or "", format=row.format or 1)


_INFO_COLUMNS = (Checkpoint.id, Run.name, Checkpoint.epoch, Checkpoint.step, Checkpoint.content_hash,
                 Checkpoint.parent_id, Checkpoint.created_at, Checkpoint.logical_size, Checkpoint.new_bytes,
                 Checkpoint.status, Checkpoint.variant, Checkpoint.format)


def infos(s: Session, ids: list[str]) -> list[CheckpointInfo]:
    """CheckpointInfo of ``ids``, in that order, in three set-based queries (no per-row loading)."""
    rows: dict[str, Any] = {}
    metrics: dict[str, dict[str, float]] = defaultdict(dict)
    tags: dict[str, list[str]] = defaultdict(list)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for r in s.execute(select(*_INFO_COLUMNS).join(Run, Run.id == Checkpoint.run_id)
                           .where(Checkpoint.id.in_(chunk))):
            rows[r[0]] = r
        for cid, name, raw in s.execute(select(Metric.checkpoint_id, Metric.name, Metric.raw)
                                        .where(Metric.checkpoint_id.in_(chunk)).order_by(Metric.position)):
            metrics[cid][name] = float(raw)
        for cid, name in s.execute(select(Tag.checkpoint_id, Tag.name).where(Tag.checkpoint_id.in_(chunk))):
            tags[cid].append(name)
    out = []
    for cid in ids:
        r = rows.get(cid)
        if r is None:
            continue
        out.append(CheckpointInfo(
            id=r[0], run=r[1], epoch=r[2], step=r[3], metrics=metrics.get(cid, {}), content_hash=r[4] or "",
            parent=r[5], created_at=as_utc(r[6]), logical_size=r[7], new_bytes=r[8],
            tags=tuple(sorted(tags.get(cid, ()))), status=r[9], variant=r[10] or "", format=r[11] or 1))
    return out


def list_checkpoints(s: Session, run: str | None = None, sort: str | None = None, *, mode: str | None = None,
                     tag: str | None = None, limit: int | None = None) -> list[CheckpointInfo]:
    """Committed checkpoints, oldest first; with ``sort=METRIC``, best first (NaN and missing last)."""
    q = select(Checkpoint.id).where(Checkpoint.status == "committed")
    if run is not None:
        q = q.where(Checkpoint.run_id == Resolver(s).run_row(run).id)
    if tag is not None:
        q = q.join(Tag, Tag.checkpoint_id == Checkpoint.id).where(Tag.name == tag)
    if sort is None or sort == "created":
        q = q.order_by(Checkpoint.seq)
    elif sort == "epoch":
        q = q.join(Run, Run.id == Checkpoint.run_id).order_by(Run.name, Checkpoint.epoch, Checkpoint.step_key,
                                                              Checkpoint.seq)
    else:
        # Best first in two index-friendly queries: rows with a finite value by (name, value), then the
        # rest (no value, NaN, inf) in commit order.
        mode = check_mode(resolve_mode(sort, mode or Resolver(s).declared_mode(sort)))
        ranked = q.join(Metric, and_(Metric.checkpoint_id == Checkpoint.id, Metric.name == sort)) \
            .where(Metric.value.is_not(None)) \
            .order_by(Metric.value.desc() if mode == "max" else Metric.value.asc(), Checkpoint.seq)
        ids = list(s.scalars(ranked.limit(limit) if limit is not None else ranked))
        if limit is None or len(ids) < limit:
            m = aliased(Metric)
            rest = q.outerjoin(m, and_(m.checkpoint_id == Checkpoint.id, m.name == sort)) \
                .where(m.value.is_(None)).order_by(Checkpoint.seq)
            if limit is not None:
                rest = rest.limit(limit - len(ids))
            ids += list(s.scalars(rest))
        return infos(s, ids)
    if limit is not None:
        q = q.limit(limit)
    return infos(s, list(s.scalars(q)))


def runs(s: Session) -> list[RunInfo]:
    """Every run with its status; a 'running' run whose process is gone is reported 'crashed'."""
    counts = dict(s.execute(select(Checkpoint.run_id, func.count()).where(Checkpoint.status == "committed")
                            .group_by(Checkpoint.run_id)).all())
    last_seq = dict(s.execute(select(Checkpoint.run_id, func.max(Checkpoint.seq))
                              .where(Checkpoint.status == "committed").group_by(Checkpoint.run_id)).all())
    last_epoch = dict(s.execute(select(Checkpoint.run_id, Checkpoint.epoch)
                                .where(Checkpoint.seq.in_([v for v in last_seq.values() if v is not None]))).all()) \
        if last_seq else {}
    out = []
    for r in s.scalars(select(Run).order_by(Run.created_at)):
        status = r.status
        if status == "running" and process_gone(r.host, r.pid, r.heartbeat_at or r.updated_at):
            status = "crashed"
        best_value = None
        if r.objective_metric:
            try:
                best = Resolver(s).best(None, run=r.name, limit=1)[0]
                best_value = next((float(m.raw) for m in best.metrics if m.name == r.objective_metric), None)
            except Exception:  # no finite value yet
                best_value = None
        out.append(RunInfo(r.name, status, r.objective_metric, r.objective_mode, as_utc(r.created_at),
                           as_utc(r.updated_at), r.host, r.pid, counts.get(r.id, 0), last_epoch.get(r.id),
                           best_value))
    return out


def objectives(s: Session) -> dict[str, tuple[str | None, str | None]]:
    return {r.name: (r.objective_metric, r.objective_mode) for r in s.scalars(select(Run))}


def status_of(s: Session, checkpoint_id: str) -> str | None:
    return s.scalar(select(Checkpoint.status).where(Checkpoint.id == checkpoint_id))


def packs_of(s: Session, ids: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for i in range(0, len(ids), 500):
        for cid, pack in s.execute(select(CheckpointPack.checkpoint_id, CheckpointPack.pack_id)
                                   .where(CheckpointPack.checkpoint_id.in_(ids[i:i + 500]))):
            out[cid].add(pack)
    return out


def exclusive_packs(s: Session, remove_ids: list[str]) -> dict[str, int]:
    """The packs (and sizes) no other checkpoint in this index uses once ``remove_ids`` are gone: what a
    deletion is expected to free (the deletion itself decides from the manifests on storage)."""
    if not remove_ids:
        return {}
    doomed = set(remove_ids)
    candidates: set[str] = set()
    for packs in packs_of(s, remove_ids).values():
        candidates |= packs
    users: dict[str, set[str]] = defaultdict(set)
    cand = sorted(candidates)
    for i in range(0, len(cand), 500):
        for cid, pack in s.execute(select(CheckpointPack.checkpoint_id, CheckpointPack.pack_id)
                                   .where(CheckpointPack.pack_id.in_(cand[i:i + 500]))):
            users[pack].add(cid)
    freed = [p for p in cand if users[p] <= doomed]
    out: dict[str, int] = {}
    for i in range(0, len(freed), 500):
        out.update(s.execute(select(Pack.id, Pack.size).where(Pack.id.in_(freed[i:i + 500]))).all())
    return out


def branch_points(s: Session, ids: list[str]) -> dict[str, str]:
    """Which of ``ids`` are parents of a committed checkpoint in another run (and that run's name)."""
    out: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        parent = aliased(Checkpoint)
        rows = s.execute(select(Checkpoint.parent_id, Run.name)
                         .join(parent, parent.id == Checkpoint.parent_id)
                         .join(Run, Run.id == Checkpoint.run_id)
                         .where(Checkpoint.parent_id.in_(chunk), Checkpoint.status == "committed",
                                Checkpoint.run_id != parent.run_id)).all()
        out.update({p: name for p, name in rows})
    return out
