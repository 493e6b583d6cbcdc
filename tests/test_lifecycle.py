"""Verify, reindex, delete, gc, corruption fallback and run status, on real files and processes."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ckpt import CheckpointStore, CorruptCheckpointError, ReadOnlyStoreError, StoreNotFoundError


def _fill(store, n=3, run="r"):
    for e in range(n):
        store.save(run, e, {"w": torch.full((1000,), float(e)), "frozen": torch.ones(500)}, {"loss": 1.0 / (e + 1)})


def _pack_of(store, selector, key="w"):
    m = store.manifest(selector)
    slot = next(m.slots[s] for p, s in m.leaves if p == (key,))
    return os.path.join(store.storage.root, "packs", f"{slot.pack}.safetensors"), slot


def test_verify_detects_a_flipped_bit_and_load_refuses(store):
    _fill(store)
    path, slot = _pack_of(store, "r@1")
    with open(path, "r+b") as f:
        f.seek(slot.offset + 100)
        b = f.read(1)
        f.seek(slot.offset + 100)
        f.write(bytes([b[0] ^ 0x10]))
    report = store.verify(full=True)
    assert not report.ok and any(p.kind == "corrupt-tensor" for p in report.problems)
    with pytest.raises(CorruptCheckpointError):
        store.load("r@1")
    assert store.verify(full=False).ok  # structure is fine; only --full re-hashes


def test_latest_skips_a_damaged_newest_checkpoint_loudly(store):
    _fill(store)
    path, _ = _pack_of(store, "r@2")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    with pytest.warns(RuntimeWarning, match="damaged"):
        state = store.load("latest")
    assert torch.equal(state["w"], torch.full((1000,), 1.0))
    with pytest.raises(CorruptCheckpointError):
        store.load("r@2")  # explicit selectors never substitute


def test_edited_manifest_is_detected(store):
    _fill(store, 1)
    info = store.latest()
    path = os.path.join(store.storage.root, "manifests", f"{info.id}.ckpt")
    data = open(path, "rb").read()
    assert b'"epoch":0' in data
    open(path, "wb").write(data.replace(b'"epoch":0', b'"epoch":7'))
    reopened = CheckpointStore(store.storage.root)  # another process; this one caches what it wrote
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        reopened.load()
    assert not reopened.verify().ok


def test_deleted_index_is_rebuilt_from_manifests(tmp_path):
    store = CheckpointStore(tmp_path / "s")
    _fill(store)
    store.set_objective("r", "loss", "min")
    store.tag("r@1", "keep")
    before = [(i.id, i.epoch, i.metrics, i.parent) for i in store.list()]
    store.close()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / "s" / f"index.sqlite{suffix}"
        if p.exists():
            p.unlink()
    again = CheckpointStore(tmp_path / "s")
    assert [(i.id, i.epoch, i.metrics, i.parent) for i in again.list()] == before
    assert again.get("keep").epoch == 1 and again.get("best").epoch == 2
    assert again.reindex() == 3
    assert again.verify().ok


def test_delete_frees_packs_only_it_used(store):
    _fill(store)
    packs_before = {e.name: e.size for e in store.storage.list("packs")}
    store.delete("r@1")
    assert [i.epoch for i in store.list()] == [0, 2]
    packs_after = {e.name: e.size for e in store.storage.list("packs")}
    assert len(packs_after) == len(packs_before) - 1  # r@1's own pack, at once
    assert torch.equal(store.load("r@0")["frozen"], torch.ones(500))  # shared tensor survived
    assert store.verify().ok
    assert store.gc(grace_seconds=0).packs == []
    store.delete("r@0", free=False)  # keeps its pack (holds the shared tensor too) for gc to judge
    assert store.gc(grace_seconds=0).packs == []  # r@2 still uses the frozen tensor in r@0's pack
    assert torch.equal(store.load("r@2")["frozen"], torch.ones(500))


def test_gc_dry_run_and_grace_period(store):
    _fill(store, 2)
    store.delete("r@1", free=False)
    assert store.gc(grace_seconds=3600).packs == []  # too young
    dry = store.gc(dry_run=True, grace_seconds=0)
    assert len(dry.packs) == 1 and len(store.storage.list("packs")) == 2


def test_readonly_open(tmp_path):
    with pytest.raises(StoreNotFoundError):
        CheckpointStore(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()
    CheckpointStore(tmp_path / "s").save("r", 0, {"x": torch.ones(1)})
    ro = CheckpointStore(tmp_path / "s", readonly=True)
    assert ro.latest().epoch == 0
    with pytest.raises(ReadOnlyStoreError):
        ro.save("r", 1, {})


RUN_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    from ckpt import CheckpointStore
    store = CheckpointStore(sys.argv[1])
    store.save(sys.argv[2], 0, {"x": torch.ones(3)})
    print("saved", flush=True)
    if sys.argv[3] == "raise":
        raise RuntimeError("training blew up")
    if sys.argv[3] == "hang":
        time.sleep(60)
""")


def test_run_status_completed_failed_crashed(tmp_path):
    loc = str(tmp_path / "s")
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    subprocess.run([sys.executable, str(script), loc, "ok-run", "ok"], check=True, timeout=120)
    subprocess.run([sys.executable, str(script), loc, "bad-run", "raise"], timeout=120, capture_output=True)
    p = subprocess.Popen([sys.executable, str(script), loc, "killed-run", "hang"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "saved"
    status = {r.name: r.status for r in CheckpointStore(loc).runs()}
    assert status["killed-run"] == "running"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    runs = {r.name: r for r in CheckpointStore(loc).runs()}
    assert {n: r.status for n, r in runs.items()} == {"ok-run": "completed", "bad-run": "failed",
                                                     "killed-run": "crashed"}
    assert runs["killed-run"].latest_epoch == 0  # "the latest checkpoint before the crash"


def test_memory_store_reopens_from_manifests():
    import uuid
    url = f"memory://reopen-{uuid.uuid4().hex}"
    a = CheckpointStore(url)
    _fill(a, 2)
    b = CheckpointStore(url)  # a new in-memory index rebuilds itself from the manifests
    assert [i.epoch for i in b.list()] == [0, 1]
    assert torch.equal(b.load("r@1")["w"], torch.full((1000,), 1.0))
