"""Index queries on a store with many checkpoints, filled straight through SQL (saving 100,000 real
checkpoints would take longer than the point being made)."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert


def run_index_bench(n: int) -> dict[str, float]:
    from ckpt import CheckpointStore
    from ckpt.catalog.schema import Checkpoint, Metric, Run
    d = tempfile.mkdtemp(prefix="ckpt-index-bench-")
    try:
        store = CheckpointStore(d)
        rng = random.Random(0)
        t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        with store.index.write() as s:
            runs = [Run(name=f"run-{r}", status="completed", created_at=t0, updated_at=t0) for r in range(100)]
            s.add_all(runs)
            s.flush()
            rows, metrics = [], []
            for i in range(n):
                cid = uuid.uuid4().hex
                run = runs[i % 100]
                rows.append({"id": cid, "run_id": run.id, "epoch": i // 100, "step": None, "step_key": -1,
                             "status": "committed", "seq": i + 1, "created_at": t0 + timedelta(seconds=i),
                             "content_hash": "0" * 64, "parent_id": None, "logical_size": 1 << 30,
                             "new_bytes": 1 << 20, "host": "bench", "pid": 1})
                metrics.append({"checkpoint_id": cid, "name": "val_acc", "position": 0,
                                "value": rng.random(), "raw": "0.5"})
                metrics.append({"checkpoint_id": cid, "name": "val_loss", "position": 1,
                                "value": rng.random(), "raw": "0.5"})
            for i in range(0, n, 5000):
                s.execute(insert(Checkpoint), rows[i:i + 5000])
                s.execute(insert(Metric), metrics[2 * i:2 * i + 10000])
        out = {}
        for name, fn in [("best(val_acc)", lambda: store.best("val_acc")),
                         ("latest()", lambda: store.latest()),
                         ("list(sort=val_acc, limit=20)", lambda: store.list(sort="val_acc", limit=20)),
                         ("get(run-7:best:val_loss)", lambda: store.get("run-7:best:val_loss"))]:
            fn()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name] = min(times)
        store.close()
        return out
    finally:
        shutil.rmtree(d, ignore_errors=True)
