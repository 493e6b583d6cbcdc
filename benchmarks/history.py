"""Cases about the fixed cost of a save and about a store's history: a tiny state saved many times, save
time as checkpoints accumulate, index rows added per save, and pruning.

These saves take milliseconds to a second each, so one worker times many of them (no ballast: the
states are a few MB) and reports medians or means. Everything goes through the public API, except
counting index rows, which reads the store's SQLite file(s) directly and read-only.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time
from typing import Any

import torch

from benchmarks.cases import many, mutate, tiny
from benchmarks.measure import fsync_path

# Folders of a store that never hold the index (skipped when looking for SQLite files).
_DATA_DIRS = {"packs", "manifests", "refs", "tmp", "objects", "blobs"}
_SQLITE = (".sqlite", ".sqlite3", ".db")


def _store(path: str):  # type: ignore[no-untyped-def]
    from ckpt import CheckpointStore
    return CheckpointStore(path, compression="none")


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- tiny state: the fixed cost of one save --------------------------------------------------------------------
def saves_of_tiny(system: str, d: str, quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """Median of N saves of a ~1 MB, 10-tensor state, each after an in-place update (so every save
    has new bytes to write); the first save (store creation) is reported apart."""
    state = tiny(quick)
    n = 5 if quick else 30
    times: list[float] = []
    out: dict[str, float] = {}
    if system == "torch":
        for i in range(n + 1):
            path = os.path.join(d, f"tiny-{i}.pt")
            mutate(state)
            dt = _timed(lambda: (torch.save(state, path), fsync_path(path)))
            if i == 0:
                out["first_save"] = dt
            else:
                times.append(dt)
    else:
        store = _store(os.path.join(d, "store"))
        for i in range(n + 1):
            mutate(state)
            dt = _timed(lambda: store.save("tiny", i, state))
            if i == 0:
                out["first_save"] = dt
            else:
                times.append(dt)
        store.close()
    out.update(save_median=statistics.median(times), save_min=min(times), saves=float(n))
    return out, {}


# -- index rows --------------------------------------------------------------------------------------------
def index_files(store_dir: str) -> list[str]:
    """The SQLite files of a local store's index (in its root or one folder down, data folders skipped)."""
    found = []
    for entry in os.scandir(store_dir):
        if entry.is_file() and entry.name.endswith(_SQLITE):
            found.append(entry.path)
        elif entry.is_dir() and entry.name not in _DATA_DIRS:
            found += [e.path for e in os.scandir(entry.path) if e.is_file() and e.name.endswith(_SQLITE)]
    return sorted(found)


def index_rows(store_dir: str) -> dict[str, int] | None:
    """Row count of every table of the store's SQLite index (None if no SQLite file is found)."""
    files = index_files(store_dir)
    if not files:
        return None
    counts: dict[str, int] = {}
    for f in files:
        con = sqlite3.connect(f"file:{f}?mode=ro", uri=True, timeout=30)
        try:
            names = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            for name in names:
                key = name if len(files) == 1 else f"{os.path.basename(f)}:{name}"
                counts[key] = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        finally:
            con.close()
    return counts


def rows_added(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
            if after.get(k, 0) != before.get(k, 0)}


def _one_change_saves(store, state: dict, first: int, count: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Saves ``first`` .. ``first+count-1``, each after changing exactly one tensor (round robin)."""
    keys = list(state)
    times = []
    for i in range(first, first + count):
        state[keys[i % len(keys)]].add_(1.0)
        times.append(_timed(lambda: store.save("hist", i, state)))
    return times


def _rows_of_one_save(store_dir: str, store, state: dict,  # type: ignore[no-untyped-def]
                      epoch: int) -> dict[str, int] | None:
    before = index_rows(store_dir)
    _one_change_saves(store, state, epoch, 1)
    return rows_added(before, index_rows(store_dir))


# -- growth: does a save get slower as checkpoints accumulate? ------------------------------------------------
def growth(d: str, quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """Save 0 writes everything (not counted); saves 1..60 change one tensor each. Mean of saves
    51-60 against saves 1-10; then the index rows added by one more such save, for N and N/10 tensors
    after the same history (a save adds a row per pack it reads, so the history must be equal)."""
    n, window, total = (200, 3, 12) if quick else (2000, 10, 60)
    out: dict[str, float] = {}
    info: dict[str, Any] = {}
    for size in (n, n // 10):
        state = many(size)
        store_dir = os.path.join(d, f"store-{size}")
        store = _store(store_dir)
        store.save("hist", 0, state)
        if size == n:
            times = _one_change_saves(store, state, 1, total)
            out["first_mean"] = statistics.fmean(times[:window])
            out["last_mean"] = statistics.fmean(times[-window:])
            info["saves"] = f"save 0 (all {n} tensors) not counted; means of saves 1-{window} and " \
                            f"{total - window + 1}-{total}"
            epoch = total + 1
        else:  # the same history, so that only the number of tensors differs
            _one_change_saves(store, state, 1, total)
            epoch = total + 1
        added = _rows_of_one_save(store_dir, store, state, epoch)
        info[f"packs_read_by_the_last_save_{size}"] = len(store.manifest("hist:latest").packs)
        rows = index_rows(store_dir)
        store.close()
        if added is None:
            info["rows"] = "no SQLite index file found in the store: rows not counted"
            continue
        out[f"rows_added_{size}"] = float(sum(added.values()))
        info[f"rows_added_by_table_{size}"] = added
        info[f"rows_after_{epoch + 1}_saves_{size}"] = rows
    return out, info


# -- prune: 60 checkpoints, keep the last 2 -----------------------------------------------------------------
def prune(d: str, quick: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """60 checkpoints of N tensors (save 0 full, 59 one-change saves), then prune(keep_last=2) against
    the mean of those 59 saves."""
    n, total = (200, 12) if quick else (2000, 60)
    state = many(n)
    store = _store(os.path.join(d, "store"))
    store.save("hist", 0, state)
    times = _one_change_saves(store, state, 1, total - 1)
    t = time.perf_counter()
    plan = store.prune(keep_last=2)
    took = time.perf_counter() - t
    left = len(store.list())
    store.close()
    out = {"prune": took, "save_mean": statistics.fmean(times), "removed": float(len(plan.remove)),
           "left": float(left)}
    info = {"bytes_freed": getattr(plan, "bytes_freed", None),
            "checkpoints": f"{total} before, keep_last=2"}
    return out, info
