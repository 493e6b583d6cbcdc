"""`ckpt ui` page timings on a store of 100,000 checkpoints (100 runs of 1,000), as a user meets them.

The index is filled through SQL in bulk, as the index case does (saving 100,000 real checkpoints
would take hours): each checkpoint with two metrics, its parent (a chain per run, and a fine-tune run
started from another run), one pack of its own, and a few tags. One run, "real", is saved for real
through store.save with a 1,000-epoch training history, so that its page reads a manifest and draws the
history. The server is the real command (`ckpt ui --port 0`, read-only) in its own process; pages are
fetched over HTTP:

    first runs page     the first request after start, while the lineage of every checkpoint is still
                        being read in the background (totals then come from one aggregate query); the
                        warm pages below are measured once that is done (``warm_up_s`` in the notes)
    runs page           warm: min of 5
    run page            a run of 1,000 checkpoints (1% of them): curves, table and retention plan
    run page (history)  the real run: 1,000-epoch history from its manifest
    runs fragment       what the page polls every 2 s
    runs after a save   a new checkpoint committed by another process, then the runs page
    checkpoint page     the real run's latest checkpoint (manifest, tensor tree)
    lineage (all runs)  100 lanes, folded
    lineage (one run)   a run and the runs connected to it
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, insert, select

RUNS = 100


def fill(d: str, n: int) -> None:
    """A store with ``n`` bulk checkpoints in RUNS runs, plus a run "real" with real saves."""
    import torch

    from ckpt import CheckpointStore
    from ckpt.catalog.schema import Checkpoint, CheckpointPack, Metric, Pack, Run, Tag
    store = CheckpointStore(d)
    history = [{"epoch": e, "step": 10 * e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1) + 0.01,
                "val_acc": 1 - 1 / (e + 2)} for e in range(1000)]
    model = {"w": torch.randn(64, 64), "b": torch.zeros(64)}
    store.set_objective("real", "val_acc", "max")
    for e in range(997, 1000):
        model["b"] += 1
        store.save("real", e, {"model": model, "history": history[:e + 1]}, {k: history[e][k] for k in
                                                                               ("val_loss", "val_acc")})
    rng = random.Random(0)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with store.index.write() as s:
        seq0 = (s.execute(select(func.max(Checkpoint.seq))).scalar() or 0) + 1
        runs = [Run(name=f"run-{r}", status="completed", objective_metric="val_acc", objective_mode="max",
                    created_at=t0, updated_at=t0) for r in range(RUNS)]
        s.add_all(runs)
        s.flush()
        rows, metrics, packs, pins, last = [], [], [], [], {}
        for i in range(n):
            cid = uuid.uuid4().hex
            run = runs[i % RUNS]
            parent = last.get(run.id)
            if i == 1:  # run-1 starts from run-0's first checkpoint: an edge between runs (a fine-tune)
                parent = rows[0]["id"]
            rows.append({"id": cid, "run_id": run.id, "epoch": i // RUNS, "step": None, "step_key": -1,
                         "status": "committed", "seq": seq0 + i, "created_at": t0 + timedelta(seconds=i),
                         "content_hash": "0" * 64, "parent_id": parent, "logical_size": 1 << 30,
                         "new_bytes": 1 << 20, "host": "bench", "pid": 1})
            last[run.id] = cid
            acc, loss = rng.random(), rng.random()
            metrics.append({"checkpoint_id": cid, "name": "val_acc", "position": 0, "value": acc, "raw": repr(acc)})
            metrics.append({"checkpoint_id": cid, "name": "val_loss", "position": 1, "value": loss,
                            "raw": repr(loss)})
            pack = uuid.uuid4().hex
            packs.append({"id": pack, "size": 1 << 20, "status": "live", "created_at": t0})
            pins.append({"checkpoint_id": cid, "pack_id": pack})
        for i in range(0, n, 5000):
            s.execute(insert(Checkpoint), rows[i:i + 5000])
            s.execute(insert(Metric), metrics[2 * i:2 * i + 10000])
            s.execute(insert(Pack), packs[i:i + 5000])
            s.execute(insert(CheckpointPack), pins[i:i + 5000])
        s.execute(insert(Tag), [{"name": f"tag-{k}", "checkpoint_id": rows[k * 997]["id"], "created_at": t0}
                                for k in range(min(20, n // 997 + 1))])
    store.close()


def fetch(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - t, len(body)


def run_ui_bench(n: int, reps: int = 5) -> tuple[dict[str, float], dict[str, Any]]:
    """Seconds per page (min of ``reps`` warm requests; the first request apart) and notes."""
    d = tempfile.mkdtemp(prefix="ckpt-ui-bench-")
    proc = None
    try:
        t = time.perf_counter()
        fill(d, n)
        info: dict[str, Any] = {"fill_s": round(time.perf_counter() - t, 1), "checkpoints": n + 3}
        proc = subprocess.Popen([sys.executable, "-m", "ckpt.cli", "--store", d, "ui", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if "http://" not in line:
            raise RuntimeError(f"ckpt ui did not start: {line}{proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        base = line.split("http://", 1)[1].split()[0]
        base = "http://" + base.rstrip("/")
        out: dict[str, float] = {}
        t_start = time.perf_counter()
        out["first runs page (cold)"], _ = fetch(base + "/")
        import json
        while not json.loads(urllib.request.urlopen(base + "/healthz", timeout=60).read())["ready"]:
            time.sleep(0.05)
        info["warm_up_s"] = round(time.perf_counter() - t_start, 2)  # lineage of every checkpoint read
        pages = {
            "runs page": "/",
            "run page": "/run?name=run-7",
            "run page (history)": "/run?name=real",
            "runs fragment (polled)": "/fragment/runs",
            "checkpoint page": "/checkpoint?id=real:latest",
            "lineage (all runs)": "/lineage",
            "lineage (one run)": "/lineage?run=run-1",
        }
        sizes = {}
        for name, path in pages.items():
            times = []
            for _ in range(reps):
                dt, size = fetch(base + path)
                times.append(dt)
            out[name] = min(times)
            sizes[name] = size
        # a checkpoint committed by another process, then the runs page (incremental refresh)
        from ckpt import CheckpointStore
        with CheckpointStore(d) as store:
            import torch
            store.save("real", 1000, {"model": {"w": torch.ones(4)}}, {"val_acc": 0.5})
        time.sleep(0.6)
        out["runs page after a new save"], _ = fetch(base + "/")
        info["page_bytes"] = sizes
        return out, info
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    res, notes = run_ui_bench(n)
    for k, v in res.items():
        print(f"{k:34s} {v * 1000:8.1f} ms")
    print(notes)
