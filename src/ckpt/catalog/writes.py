"""Writes to the index, each a function of a session inside one write transaction.

A save touches the index twice: :func:`begin_save` (claim ``(run, epoch, step, variant)``, look up which
new tensors the store already holds, claim the ones it will write) and :func:`ingest` (the committed
checkpoint with its metrics, tags, pack pins and the locations of the tensors it wrote). Rows added per
save: one checkpoint, its metrics and tags, one pin per pack it reads, one tensor row per tensor it
wrote. Never one row per checkpoint x tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ckpt.catalog.queries import HOST, now, process_gone
from ckpt.catalog.raw import Raw
from ckpt.catalog.schema import Checkpoint, Claim, Meta, Pack, Run, Tag, TensorBlob
from ckpt.errors import CkptError, DuplicateCheckpointError
from ckpt.format.manifest import Manifest
from ckpt.validation import step_key

_CHUNK = 500

#: Saves this process is running right now; a pending row of ours that is not here was abandoned.
IN_FLIGHT: set[str] = set()




def bulk_insert(s: Session, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """INSERT many rows through the driver's executemany: SQLAlchemy's per-row parameter handling cost
    more than SQLite itself (0.5 s for 10,000 tensor rows, measured)."""
    if not rows:
        return
    conn = s.connection()
    quote = conn.dialect.identifier_preparer.quote
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) "
           f"VALUES ({', '.join([mark] * len(columns))})")
    for chunk in chunks(rows, 5000):
        conn.exec_driver_sql(sql, chunk)


def chunks(items: list, n: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def writer_gone(host: str | None, pid: int | None, since, checkpoint_id: str | None = None) -> bool:  # type: ignore[no-untyped-def]
    """Whether the save behind a pending row or claim is dead (this process: not in flight any more)."""
    if host == HOST and pid == os.getpid() and checkpoint_id is not None:
        return checkpoint_id not in IN_FLIGHT
    return process_gone(host, pid, since)


class DeadClaim(Exception):
    """Internal: a dead writer's claim blocks (run, epoch, step); settle it first, then claim again."""

    def __init__(self, checkpoint_id: str) -> None:
        super().__init__(checkpoint_id)
        self.checkpoint_id = checkpoint_id


def touch_run(s: Session, name: str, *, status: str | None = "running") -> Run:
    run = s.scalar(select(Run).where(Run.name == name))
    ts = now()
    if run is None:
        run = Run(name=name, status=status or "running", created_at=ts, updated_at=ts, heartbeat_at=ts,
                  host=HOST, pid=os.getpid())
        s.add(run)
        s.flush()
    elif status is not None:
        run.status, run.updated_at, run.heartbeat_at, run.host, run.pid = status, ts, ts, HOST, os.getpid()
    return run


def _r(s: Session | Raw) -> Raw:
    return s if isinstance(s, Raw) else Raw(s)


def _run_id(s: Session | Raw, name: str, *, status: str | None) -> int:
    """The run's id, the run created if new; its status (and heartbeat) set when given."""
    raw = _r(s)
    rid = raw.value("SELECT id FROM runs WHERE name = ?", (name,))
    ts = raw.time(now())
    if rid is None:
        raw.run("INSERT INTO runs (name, status, created_at, updated_at, heartbeat_at, host, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, status or "running", ts, ts, ts, HOST, os.getpid()))
        return raw.value("SELECT id FROM runs WHERE name = ?", (name,))
    if status is not None:
        raw.run("UPDATE runs SET status = ?, updated_at = ?, heartbeat_at = ?, host = ?, pid = ? WHERE id = ?",
                (status, ts, ts, HOST, os.getpid(), rid))
    return rid


def latest_id(s: Session | Raw, run_id: int) -> str | None:
    return _r(s).value("SELECT id FROM checkpoints WHERE run_id = ? AND status = 'committed' "
                        "ORDER BY seq DESC LIMIT 1", (run_id,))


def claim_checkpoint(s: Session | Raw, ckpt_id: str, run_name: str, epoch: int, step: int | None, variant: str,
                     parent: str | None, default_parent: bool, logical_size: int) -> str | None:
    """Claim (run, epoch, step, variant) with a pending row; returns the parent id (with
    ``default_parent``, the run's latest committed checkpoint). A dead writer's claim in the way raises
    DeadClaim (the caller settles it from storage, then retries)."""
    raw = _r(s)
    run_id = _run_id(raw, run_name, status="running")
    key = step_key(step)
    found = raw.one("SELECT id, status, host, pid, created_at FROM checkpoints "
                    "WHERE run_id = ? AND epoch = ? AND step_key = ? AND variant = ?", (run_id, epoch, key, variant))
    clash = None
    if found is not None:
        clash = _Clash(found[0], found[1], found[2], found[3], _read_time(found[4]))
    if clash is not None and clash.status == "pending" and \
            writer_gone(clash.host, clash.pid, clash.created_at, clash.id):
        raise DeadClaim(clash.id)
    if clash is not None:
        what = f"epoch {epoch}" + (f", step {step}" if step is not None else "") + \
            (f", variant {variant!r}" if variant else "")
        state = {"committed": "already has", "pending": "is being saved by another process with"}.get(
            clash.status, "has")
        raise DuplicateCheckpointError(
            f"run {run_name!r} {state} a checkpoint for {what} ({clash.id[:12]}); save under another "
            f"epoch/step, or delete it first: ckpt rm {run_name}@{epoch}")
    if default_parent:
        parent = latest_id(raw, run_id)
    raw.run("INSERT INTO checkpoints (id, run_id, epoch, step, step_key, variant, format, status, created_at, "
            "parent_id, logical_size, new_bytes, host, pid) VALUES (?, ?, ?, ?, ?, ?, 2, 'pending', ?, ?, ?, 0, ?, ?)",
            (ckpt_id, run_id, epoch, step, key, variant, raw.time(now()), parent, logical_size, HOST, os.getpid()))
    return parent


@dataclass(frozen=True)
class _Clash:
    id: str
    status: str
    host: str | None
    pid: int | None
    created_at: Any


def _read_time(value: Any) -> Any:
    """A timestamp column read through the driver: SQLite gives the text SQLAlchemy wrote."""
    if isinstance(value, str):
        from datetime import datetime
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return now()
    return value


@dataclass(frozen=True)
class Stored:
    """Where the index says a tensor's bytes are."""

    hash: str
    pack: str
    offset: int
    length: int
    nbytes: int
    codec: str
    dtype: str
    shape: tuple[int, ...]
    check: str


@dataclass
class Begun:
    parent: str | None
    known: dict[str, list[Stored]] = field(default_factory=dict)  # check -> where the store has such bytes
    mine: set[str] = field(default_factory=set)  # checks this save claimed: it writes them
    others: dict[str, str] = field(default_factory=dict)  # check -> the save in flight that writes it
    siblings: set[str] = field(default_factory=set)  # checks another process of this same save writes


def lookup(s: Session | Raw, checks: list[str]) -> dict[str, list[Stored]]:
    out: dict[str, list[Stored]] = {}
    if not checks:
        return out
    for h, pack, offset, length, nbytes, codec, dtype, shape, check in _r(s).where_in(
            'SELECT hash, pack_id, "offset", length, nbytes, codec, dtype, shape, "check" FROM tensors '
            'WHERE "check" IN ({})', sorted(set(checks))):
        dims = tuple(int(d) for d in shape.split(",") if d != "")
        out.setdefault(check, []).append(Stored(h, pack, offset, length, nbytes, codec, dtype, dims, check))
    return out


def claim_tensors(s: Session | Raw, ckpt_id: str, checks: list[str]) -> tuple[set[str], dict[str, str], set[str]]:
    """Claim the new tensors a save is about to write; returns (claimed here, claimed by other saves,
    claimed by another process of this same save: a rank of a torch.distributed save).

    A claim whose save is gone (its pending row dropped, or its process dead) is taken over."""
    raw = _r(s)
    mine: set[str] = set()
    others: dict[str, str] = {}
    siblings: set[str] = set()
    wanted = sorted(set(checks))
    existing = {c: (cid, host, pid) for c, cid, host, pid in raw.where_in(
        'SELECT "check", checkpoint_id, host, pid FROM claims WHERE "check" IN ({})', wanted)}
    owners = sorted({v[0] for v in existing.values()})
    alive: set[str] = set()
    if owners:
        for cid, host, pid, created in raw.where_in(
                "SELECT id, host, pid, created_at FROM checkpoints WHERE status = 'pending' AND id IN ({})", owners):
            if not writer_gone(host, pid, _read_time(created), cid):
                alive.add(cid)
    stale = [c for c, (owner, _, _) in existing.items() if owner not in alive and owner != ckpt_id]
    for i in range(0, len(stale), _CHUNK):
        chunk = stale[i:i + _CHUNK]
        raw.run(f'DELETE FROM claims WHERE "check" IN ({",".join("?" * len(chunk))})', chunk)
    ts, pid = raw.time(now()), os.getpid()
    rows: list[tuple] = []
    for c in wanted:
        claim = existing.get(c)
        if claim is not None and claim[0] in alive and claim[0] != ckpt_id:
            others[c] = claim[0]
        elif claim is not None and claim[0] == ckpt_id and (claim[1], claim[2]) != (HOST, pid):
            siblings.add(c)
        else:
            mine.add(c)
            if claim is None or claim[0] != ckpt_id:
                rows.append((c, ckpt_id, ts, HOST, pid))
    raw.many('INSERT INTO claims ("check", checkpoint_id, created_at, host, pid) VALUES (?, ?, ?, ?, ?)', rows)
    return mine, others, siblings


def begin_save(s: Session | Raw, ckpt_id: str, run: str, epoch: int, step: int | None, variant: str, parent: str | None,
               default_parent: bool, logical_size: int, lookups: list[str], claims: list[str]) -> Begun:
    """Step A of a save in one transaction: the claim, what the store already holds, what to write."""
    begun = Begun(claim_checkpoint(s, ckpt_id, run, epoch, step, variant, parent, default_parent, logical_size))
    begun.known = lookup(s, lookups)
    todo = [c for c in claims if c not in begun.known]
    if todo:
        begun.mine, begun.others, begun.siblings = claim_tensors(s, ckpt_id, todo)
    return begun


def begin_part(s: Session | Raw, ckpt_id: str, lookups: list[str], claims: list[str]) -> Begun:
    """Step A for one process of a multi-process save whose (run, epoch, step) another process claimed:
    what the store already holds, and which new tensors this process writes."""
    row = _r(s).one("SELECT status, parent_id FROM checkpoints WHERE id = ?", (ckpt_id,))
    if row is None or row[0] != "pending":
        raise CkptError(f"save {ckpt_id[:12]} was abandoned by the process that began it; nothing was written")
    begun = Begun(row[1], lookup(s, lookups))
    todo = [c for c in claims if c not in begun.known]
    if todo:
        begun.mine, begun.others, begun.siblings = claim_tensors(s, ckpt_id, todo)
    return begun


def pending_claims(s: Session, checks: list[str]) -> dict[str, str]:
    """Which of ``checks`` are still claimed, and by which save."""
    out: dict[str, str] = {}
    for chunk in chunks(sorted(set(checks))):
        out.update(s.execute(select(Claim.check, Claim.checkpoint_id).where(Claim.check.in_(chunk))).all())
    return out


def release(s: Session | Raw, ckpt_id: str) -> None:
    """Forget a save that will not commit: its claims and its pending row."""
    raw = _r(s)
    raw.run("DELETE FROM claims WHERE checkpoint_id = ?", (ckpt_id,))
    raw.run("DELETE FROM checkpoints WHERE id = ? AND status = 'pending'", (ckpt_id,))


def ingest(s: Session | Raw, m: Manifest, pack_sizes: dict[str, int] | None = None, tags: Iterable[str] = (), *,
           status: str | None = None) -> None:
    """Make the index agree with a manifest (step D of a save, recovery and sync all come through here).

    Idempotent. Tensor rows are added only for packs the index did not know, so a save that reused
    every tensor adds none."""
    raw = _r(s)
    run_id = _run_id(raw, m.run, status=status)
    sizes = dict(m.pack_sizes)
    sizes.update(pack_sizes or {})
    row = raw.one("SELECT status, seq FROM checkpoints WHERE id = ?", (m.id,))
    if row is None:
        raw.run("INSERT INTO checkpoints (id, run_id, epoch, step, step_key, variant, format, status, created_at, "
                "parent_id, logical_size, new_bytes, host, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                (m.id, run_id, m.epoch, m.step, step_key(m.step), m.variant, m.format,
                 raw.time(_parse_time(m.created_at)), m.parent, m.logical_size, m.new_bytes, m.host or None, m.pid))
    packs = list(m.table.packs)
    known_packs = {r[0] for r in raw.where_in("SELECT id FROM packs WHERE id IN ({})", packs)} if packs else set()
    fresh = [p for p in packs if p not in known_packs]
    if fresh:
        ts = raw.time(now())
        raw.many("INSERT INTO packs (id, size, status, created_at) VALUES (?, ?, 'live', ?)",
                 [(p, int(sizes.get(p, 0)), ts) for p in fresh])
        _insert_tensors(raw, m, fresh)
    pinned = {r[0] for r in raw.rows("SELECT pack_id FROM checkpoint_packs WHERE checkpoint_id = ?", (m.id,))} \
        if row is not None else set()
    raw.many("INSERT INTO checkpoint_packs (checkpoint_id, pack_id) VALUES (?, ?)",
             [(m.id, p) for p in packs if p not in pinned])
    if row is not None:
        raw.run("DELETE FROM metrics WHERE checkpoint_id = ?", (m.id,))
    raw.many("INSERT INTO metrics (checkpoint_id, name, position, value, raw) VALUES (?, ?, ?, ?, ?)",
             [(m.id, name, pos, value if value == value and abs(value) != float("inf") else None, repr(value))
              for pos, (name, value) in enumerate(m.metrics.items())])
    for t in tags:
        tag(raw, t, m.id)
    if row is not None:
        raw.run("DELETE FROM claims WHERE checkpoint_id = ?", (m.id,))
    if row is None or row[0] != "committed":
        seq = (raw.value("SELECT max(seq) FROM checkpoints WHERE status = 'committed'") or 0) + 1
        raw.run("UPDATE checkpoints SET status = 'committed', seq = ?, content_hash = ?, new_bytes = ?, "
                "logical_size = ?, format = ?, variant = ? WHERE id = ?",
                (seq, m.content_hash, m.new_bytes, m.logical_size, m.format, m.variant, m.id))
    else:
        raw.run("UPDATE checkpoints SET content_hash = ?, new_bytes = ?, logical_size = ?, format = ?, variant = ? "
                "WHERE id = ?", (m.content_hash, m.new_bytes, m.logical_size, m.format, m.variant, m.id))


def _insert_tensors(s: Session | Raw, m: Manifest, packs: list[str]) -> None:
    import numpy as np
    t = m.table
    wanted = np.isin(t.rows["pack"], [t.packs.index(p) for p in packs])
    seen: set[tuple[str, str]] = set()
    rows = []
    hashes, checks, shapes = t.hashes, t.checks, t.shapes
    r = t.rows
    offsets, lengths, nbytes = r["offset"].tolist(), r["length"].tolist(), r["nbytes"].tolist()
    codecs, dtypes, pack_index = r["codec"].tolist(), r["dtype"].tolist(), r["pack"].tolist()
    for i in np.flatnonzero(wanted).tolist():
        pack = t.packs[pack_index[i]]
        key = (hashes[i], pack)
        if key in seen:
            continue
        seen.add(key)
        rows.append((hashes[i], pack, offsets[i], lengths[i], nbytes[i], ("raw", "zstd")[codecs[i]],
                     t.dtypes[dtypes[i]], ",".join(map(str, shapes[i])), checks[i]))
    _r(s).many('INSERT INTO tensors (hash, pack_id, "offset", length, nbytes, codec, dtype, shape, "check") '
                'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', rows)


def _parse_time(text: str):  # type: ignore[no-untyped-def]
    from datetime import datetime
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):  # manifests are validated; this only guards hand-made ones
        return now()


def mark_deleting(s: Session, ids: list[str]) -> None:
    """Checkpoints a deletion is about to remove: no longer listed or resolved from here on."""
    for chunk in chunks(ids):
        s.execute(update(Checkpoint).where(Checkpoint.id.in_(chunk))
                  .values(status="deleting", host=HOST, pid=os.getpid()))


def forget_checkpoints(s: Session, ids: list[str]) -> None:
    """Drop index rows of checkpoints whose manifests are gone (metrics, tags and pins go with them)."""
    for chunk in chunks(ids):
        s.execute(delete(Claim).where(Claim.checkpoint_id.in_(chunk)))
        s.execute(delete(Checkpoint).where(Checkpoint.id.in_(chunk)))


def forget_packs(s: Session, ids: list[str]) -> None:
    """Drop index rows of packs that are gone from storage (their tensor rows go with them)."""
    for chunk in chunks(ids):
        s.execute(delete(TensorBlob).where(TensorBlob.pack_id.in_(chunk)))
        s.execute(delete(Pack).where(Pack.id.in_(chunk)))


def get_meta(s: Session, key: str) -> str | None:
    return s.scalar(select(Meta.value).where(Meta.key == key))


def set_meta(s: Session, key: str, value: str) -> None:
    row = s.get(Meta, key)
    if row is None:
        s.add(Meta(key=key, value=value))
    else:
        row.value = value


def set_objective(s: Session, run: str, metric: str, mode: str) -> str:
    r = touch_run(s, run, status=None)
    r.objective_metric, r.objective_mode = metric, mode
    return r.status


def set_status(s: Session, run: str, status: str) -> tuple[str | None, str | None]:
    r = touch_run(s, run, status=status)
    return r.objective_metric, r.objective_mode


def finish_at_exit(s: Session, run: str, status: str) -> None:
    s.execute(update(Run).where(Run.name == run, Run.status == "running", Run.pid == os.getpid())
              .values(status=status, updated_at=now()))


def tag(s: Session | Raw, name: str, checkpoint_id: str) -> None:
    raw = _r(s)
    raw.run("DELETE FROM tags WHERE name = ?", (name,))
    raw.run("INSERT INTO tags (name, checkpoint_id, created_at) VALUES (?, ?, ?)", (name, checkpoint_id, raw.time(now())))


def untag(s: Session, name: str) -> None:
    s.execute(delete(Tag).where(Tag.name == name))
