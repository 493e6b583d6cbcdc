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
from ckpt.errors import CkptError
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
        run_id = Resolver(s).run_row(run).id
        if tag is None and (sort is None or sort == "created"):
            # By the run's key index, status filtered here: given "status = ? ORDER BY seq", SQLite
            # picks the (status, seq) index and walks every checkpoint of every run (72 ms -> 25 ms
            # for a run of 1,000 among 100,000).
            rows = s.execute(select(Checkpoint.id, Checkpoint.status, Checkpoint.seq)
                             .where(Checkpoint.run_id == run_id)).all()
            ids = [r[0] for r in sorted(rows, key=lambda r: r[2] or 0) if r[1] == "committed"]
            return infos(s, ids[:limit] if limit is not None else ids)
        q = q.where(Checkpoint.run_id == run_id)
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
    return _run_infos(s, counts, last_epoch)


def _run_infos(s: Session, counts: dict[int, int], last_epoch: dict[int, int]) -> list[RunInfo]:
    """Every run, oldest first, with 'crashed' resolved and its objective's best value."""
    rows = list(s.scalars(select(Run).order_by(Run.created_at)))
    best = best_per_run(s, rows)  # one ordered scan per objective, not one query per run
    out = []
    for r in rows:
        status = r.status
        if status == "running" and process_gone(r.host, r.pid, r.heartbeat_at or r.updated_at):
            status = "crashed"
        value = best.get(r.id)
        out.append(RunInfo(r.name, status, r.objective_metric, r.objective_mode, as_utc(r.created_at),
                           as_utc(r.updated_at), r.host, r.pid, counts.get(r.id, 0), last_epoch.get(r.id),
                           value[0] if value else None))
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


# -- cheap queries for a live view (ckpt ui): no per-run or per-checkpoint round trips -------------------

def commit_marker(s: Session) -> tuple[int, int]:
    """(committed checkpoints, highest commit seq): it moves whenever a checkpoint is committed or
    deleted, so a view can tell in one index-only query whether what it cached is still current."""
    row = s.execute(select(func.count(), func.max(Checkpoint.seq)).where(Checkpoint.status == "committed")).one()
    return int(row[0] or 0), int(row[1] or 0)


def checkpoint_rows(s: Session, after_seq: int = 0, limit: int | None = None) -> list[tuple]:
    """Committed checkpoints with ``seq > after_seq``, in commit order, as plain tuples
    (seq, id, run, epoch, step, variant, parent, logical_size, new_bytes): the lineage and per-run totals
    a view keeps in memory and extends with only what is new (no timestamps: parsing them is most of the
    cost of 100,000 rows)."""
    names = dict(s.execute(select(Run.id, Run.name)).all())
    q = (select(Checkpoint.seq, Checkpoint.id, Checkpoint.run_id, Checkpoint.epoch, Checkpoint.step,
                Checkpoint.variant, Checkpoint.parent_id, Checkpoint.logical_size, Checkpoint.new_bytes)
         .where(Checkpoint.status == "committed", Checkpoint.seq > after_seq).order_by(Checkpoint.seq))
    if limit is not None:
        q = q.limit(limit)
    # through the Core connection: the ORM's per-row result handling would double the cost
    return [(r[0], r[1], names[r[2]], r[3], r[4], r[5] or "", r[6], r[7], r[8]) for r in s.connection().execute(q)]


def run_totals(s: Session) -> dict[str, tuple[int, int, int, int | None]]:
    """Run name -> (committed checkpoints, bytes they hold, bytes their saves wrote, epoch of the newest),
    in two queries (one pass over the checkpoints)."""
    names = dict(s.execute(select(Run.id, Run.name)).all())
    agg = s.execute(select(Checkpoint.run_id, func.count(), func.sum(Checkpoint.logical_size),
                           func.sum(Checkpoint.new_bytes), func.max(Checkpoint.seq))
                    .where(Checkpoint.status == "committed").group_by(Checkpoint.run_id)).all()
    epochs = dict(s.execute(select(Checkpoint.run_id, Checkpoint.epoch).where(
        Checkpoint.status == "committed", Checkpoint.seq.in_([a[4] for a in agg if a[4] is not None]))).all()) \
        if agg else {}
    return {names[a[0]]: (int(a[1]), int(a[2] or 0), int(a[3] or 0), epochs.get(a[0])) for a in agg if a[0] in names}


def best_per_run(s: Session, rows: list[Run] | None = None) -> dict[int, tuple[float, str]]:
    """Run id -> (best value of its objective, that checkpoint's id), for every run with an objective:
    one ordered scan of the (name, value) index per objective, stopped once each run has its best,
    instead of one query per run. Ranked as 'RUN:best' ranks (finite values, earliest on ties)."""
    rows = list(s.scalars(select(Run))) if rows is None else rows
    by_objective: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in rows:
        if r.objective_metric:
            try:
                mode = check_mode(resolve_mode(r.objective_metric, r.objective_mode))
            except CkptError:  # a damaged row's mode: no best value to show, not a failed listing
                continue
            by_objective[(r.objective_metric, mode)].add(r.id)
    best: dict[int, tuple[float, str]] = {}
    for (metric, mode), wanted in by_objective.items():
        q = (select(Checkpoint.run_id, Metric.raw, Checkpoint.id).join(Checkpoint, Checkpoint.id == Metric.checkpoint_id)
             .where(Metric.name == metric, Metric.value.is_not(None), Checkpoint.status == "committed",
                    Checkpoint.run_id.in_(sorted(wanted)))
             .order_by(Metric.value.desc() if mode == "max" else Metric.value.asc(), Checkpoint.seq.asc()))
        found = 0
        for run_id, raw, cid in s.execute(q.execution_options(yield_per=1000)):
            if run_id not in best:
                best[run_id] = (float(raw), cid)
                found += 1
                if found == len(wanted):
                    break
    return best


def run_states(s: Session) -> list[RunInfo]:
    """Every run with its status ('crashed' resolved as in :func:`runs`) and the best value of its
    objective (:func:`best_per_run`), without counting checkpoints (``checkpoints=0, latest_epoch=None``)."""
    return _run_infos(s, {}, {})


def tags(s: Session) -> dict[str, str]:
    """Every tag -> the checkpoint it names."""
    return dict(s.execute(select(Tag.name, Tag.checkpoint_id)).all())


def run_checkpoints(s: Session, run: str) -> list[CheckpointInfo]:
    """One run's committed checkpoints, oldest first, read through the (run_id, seq) index: the same
    as ``list_checkpoints(run=...)`` at a fraction of the cost on a large index."""
    run_id = Resolver(s).run_row(run).id
    rows = [r for r in s.execute(select(*_INFO_COLUMNS).join(Run, Run.id == Checkpoint.run_id)
                                 .where(Checkpoint.run_id == run_id).order_by(Checkpoint.seq))
            if r[9] == "committed"]
    metrics: dict[str, dict[str, float]] = defaultdict(dict)
    for cid, name, raw in s.execute(select(Metric.checkpoint_id, Metric.name, Metric.raw)
                                    .join(Checkpoint, Checkpoint.id == Metric.checkpoint_id)
                                    .where(Checkpoint.run_id == run_id).order_by(Metric.checkpoint_id,
                                                                                 Metric.position)):
        metrics[cid][name] = float(raw)
    tags: dict[str, list[str]] = defaultdict(list)
    for cid, name in s.execute(select(Tag.checkpoint_id, Tag.name).join(Checkpoint, Checkpoint.id == Tag.checkpoint_id)
                               .where(Checkpoint.run_id == run_id)):
        tags[cid].append(name)
    return [CheckpointInfo(
        id=r[0], run=r[1], epoch=r[2], step=r[3], metrics=metrics.get(r[0], {}), content_hash=r[4] or "",
        parent=r[5], created_at=as_utc(r[6]), logical_size=r[7], new_bytes=r[8],
        tags=tuple(sorted(tags.get(r[0], ()))), status=r[9], variant=r[10] or "", format=r[11] or 1) for r in rows]


def pack_owners(s: Session, pack_ids: list[str]) -> dict[str, str]:
    """For each pack, the earliest committed checkpoint that uses it: the save that wrote it, unless that
    one was deleted (then the oldest checkpoint still holding it)."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for i in range(0, len(pack_ids), 500):
        chunk = pack_ids[i:i + 500]
        # status is tested here, not in SQL: SQLite would then scan the status index instead of the pins
        for pack, cid, seq, status in s.execute(select(CheckpointPack.pack_id, Checkpoint.id, Checkpoint.seq,
                                                       Checkpoint.status)
                                                .join(Checkpoint, Checkpoint.id == CheckpointPack.checkpoint_id)
                                                .where(CheckpointPack.pack_id.in_(chunk))):
            if status != "committed":
                continue
            if pack not in first or seq < first[pack]:
                first[pack], out[pack] = seq, cid
    return out
