"""torch.distributed.checkpoint through the store, with real gloo process groups on CPU.

One world of 4 processes saves a sharded state (DTensors, uneven shards, replicated tensors, equal
zero shards on every rank, non-tensor values); a world of 2 new processes loads it resharded (other
shard dims) and checks every tensor bit for bit, saves it again (nothing new is written), then saves
with rank 1 killed in the middle: no checkpoint is committed and nothing is left pending or stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ckpt import CheckpointStore

TIMEOUT = 300  # a whole world, torch imports included, on a busy 2-core machine

RANK = textwrap.dedent(r'''
    # One launcher per world: import torch once, then fork a process per rank (much cheaper on a busy
    # machine than every rank importing torch itself).
    import json, os, signal, sys, time, traceback
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from ckpt import CheckpointStore
    from ckpt.integrations import dcp as ckpt_dcp

    mode, world, init, location, index, outdir = sys.argv[1:7]
    world = int(world)

    def glob(name, shape, dtype=torch.float32):
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        return torch.randn(*shape, generator=g).to(dtype)

    GLOBAL = {"w": glob("w", (101, 60)), "emb": glob("emb", (70, 51), torch.bfloat16), "rep": glob("rep", (40,)),
              "zeros": torch.zeros(80, 30)}

    def same(a, b):
        return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))

    def rank_main(rank):
        out = os.path.join(outdir, f"{mode}-{rank}.json")
        T0 = time.time()
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        mesh = init_device_mesh("cpu", (world,))

        def state(placements, fill=None):
            sd = {}
            for name, t in GLOBAL.items():
                src = t if fill is None else torch.full_like(t, fill)
                sd[name] = distribute_tensor(src, mesh, placements.get(name, [Replicate()]))
            return {"model": sd, "plain": GLOBAL["rep"] * 2 if fill is None else torch.zeros(40),
                    "meta": {"step": 1234 if fill is None else 0, "note": "hello" if fill is None else ""}}

        store = CheckpointStore(location, index=index)
        report = {}
        if mode == "save":
            sd = state({"w": [Shard(0)], "emb": [Shard(1)], "zeros": [Shard(0)]})
            info = ckpt_dcp.save(sd, store, "dist", 0, metrics={"loss": 0.5})
            report["save"] = [info.id, info.new_bytes]
            report["t_end"] = time.time() - T0
            with open(out, "w") as f:
                json.dump(report, f)
            return
        sd = state({"w": [Shard(1)], "emb": [Shard(0)], "zeros": [Shard(1)], "rep": [Shard(0)]}, fill=-1.0)
        info = ckpt_dcp.load(sd, store, "dist@0")
        full = {k: v.full_tensor() for k, v in sd["model"].items()}
        report["load"] = info.id
        report["exact"] = all(same(full[k], GLOBAL[k]) for k in GLOBAL)
        report["plain"] = same(sd["plain"], GLOBAL["rep"] * 2)
        report["meta"] = sd["meta"]
        first = ckpt_dcp.save(sd, store, "dist", 1)  # new layout, new chunks: written
        again = ckpt_dcp.save(sd, store, "dist", 2)  # same layout, same chunks: deduplicated
        report["again"] = [first.new_bytes, again.new_bytes]
        dist.barrier()
        with open(out, "w") as f:       # before the crash below
            json.dump(report, f)
        if rank == 1:                   # die in the middle of the next save, before writing its pack
            real = store.storage.open_sink
            def dying(rel, **kw):
                if rel.startswith("packs/"):
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(rel, **kw)
            store.storage.open_sink = dying
        sd["model"]["w"] = distribute_tensor(GLOBAL["w"] + 1, mesh, [Shard(1)])
        try:
            ckpt_dcp.save(sd, store, "dist", 3)
            report["killed_save"] = "committed"
        except BaseException as exc:
            report["killed_save"] = type(exc).__name__
        report["t_end"] = time.time() - T0
        with open(out, "w") as f:
            json.dump(report, f)

    children = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                rank_main(rank)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)      # skip the collective teardown: a broken group would hang it
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    print("exit statuses", codes, flush=True)
''')


def _world(tmp_path, mode: str, world: int, location: str, index: str) -> list[dict]:
    script = tmp_path / "world.py"
    script.write_text(RANK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen([sys.executable, str(script), mode, str(world), str(tmp_path / f"init-{mode}"),
                             location, index, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    reports = []
    for r in range(world):
        path = tmp_path / f"{mode}-{r}.json"
        if not path.exists():
            pytest.fail(f"rank {r} of the {mode} world left no report (launcher exit {proc.returncode}):\n"
                        f"{out[-2000:]}\n{err[-6000:]}")
        reports.append(json.loads(path.read_text()))
    return reports


@pytest.fixture
def dist_store(request, tmp_path):
    """The multi-host set-up, S3 blobs and a PostgreSQL index, when the test servers can run here;
    otherwise one host's: a local directory and SQLite."""
    try:
        server = request.getfixturevalue("s3_server")
        return request.getfixturevalue("s3_url"), request.getfixturevalue("pg_url"), server.storage_options
    except pytest.skip.Exception:
        return str(tmp_path / "store"), f"sqlite:///{tmp_path}/index.sqlite", None


@pytest.mark.timeout(900)
def test_save_on_four_load_on_two_and_a_rank_killed_mid_save(dist_store, tmp_path):
    location, index, options = dist_store
    saved = _world(tmp_path, "save", 4, location, index)
    ckpt_id = saved[0]["save"][0]
    assert all(r["save"][0] == ckpt_id for r in saved)  # every rank learns the committed id

    loaded = _world(tmp_path, "load", 2, location, index)
    for r in loaded:
        assert r["load"] == ckpt_id and r["exact"] and r["plain"]
        assert r["meta"] == {"step": 1234, "note": "hello"}
        # Saving the same state again writes no tensor again, only DCP's non-tensor pickles (which carry
        # a random serialization id).
        assert r["again"][1] < 8000 < r["again"][0]
    assert loaded[1].get("killed_save") is None  # rank 1 died: its report predates the crash
    assert loaded[0]["killed_save"] not in (None, "committed")

    store = CheckpointStore(location, index=index, storage_options=options)
    try:
        assert [(i.run, i.epoch) for i in store.list()] == [("dist", 0), ("dist", 1), ("dist", 2)]
        with store.index.read() as s:
            from sqlalchemy import select

            from ckpt.catalog.schema import Checkpoint
            assert s.execute(select(Checkpoint.id).where(Checkpoint.status != "committed")).all() == []
        info = store.get("dist@0")
        assert info.metrics == {"loss": 0.5} and info.new_bytes > 0
        m = store.manifest(info.id)
        assert m.extra.get("world_size") == 4
        # Equal zero shards of four ranks were written once; the manifest names one home per hash.
        homes: dict[str, set] = {}
        for s in m.slots:
            homes.setdefault(s.hash, set()).add(s.pack)
        assert all(len(p) == 1 for p in homes.values())
        from ckpt.integrations.dcp import load_full
        full = load_full(store, "dist@0")
        g = torch.Generator().manual_seed(sum(map(ord, "w")))
        assert torch.equal(full["model.w"], torch.randn(101, 60, generator=g))
        assert torch.equal(full["model.zeros"], torch.zeros(80, 30))
        assert store.verify(full=True).ok
        # The aborted save removed its own packs: nothing unreferenced remains for gc.
        assert store.gc(grace_seconds=0).packs == []
    finally:
        store.close()


def test_two_distributed_saves_at_one_step_are_never_merged(tmp_path):
    """Without a process group (one process), as a notebook or a single-GPU job calls it: the second save
    at the same (run, epoch, step) is the store's own DuplicateCheckpointError, not DCP's
    CheckpointException (a BaseException that `except Exception` misses), and the first stays intact."""
    from ckpt import DuplicateCheckpointError
    from ckpt.integrations import dcp as ckpt_dcp
    with CheckpointStore(tmp_path / "s") as store:
        first = ckpt_dcp.save({"w": torch.ones(4)}, store, "r", 1, step=5)
        with pytest.raises(DuplicateCheckpointError):
            ckpt_dcp.save({"w": torch.zeros(4)}, store, "r", 1, step=5)
        assert [i.id for i in store.list()] == [first.id]
        out = {"w": torch.full((4,), 7.0)}
        assert ckpt_dcp.load(out, store, "r@1").id == first.id
        assert torch.equal(out["w"], torch.ones(4))
        assert store.verify(full=True).ok
