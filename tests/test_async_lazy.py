"""Asynchronous saves, lazy loads, and change detection against the parent checkpoint."""

import threading

import pytest
import torch

from ckpt import CheckpointStore, DuplicateCheckpointError
from conftest import assert_same


def test_async_save_snapshots_at_call_time(store):
    w = torch.zeros(1 << 20)
    pending = store.save("a", 0, {"w": w, "step": 0}, {"loss": 1.0}, blocking=False)
    w.add_(5.0)  # the optimizer steps right after the call
    info = pending.result(timeout=120)
    assert info.epoch == 0 and store.get("a@0").id == info.id
    assert torch.equal(store.load("a@0")["w"], torch.zeros(1 << 20))


def test_async_saves_keep_order_and_lineage(store):
    w = torch.zeros(4096)
    for e in range(5):
        w.fill_(e)
        store.save("a", e, {"w": w}, blocking=False)
    last = store.wait()
    assert last.epoch == 4
    infos = store.list(run="a")
    assert [i.epoch for i in infos] == [0, 1, 2, 3, 4]
    assert [i.parent for i in infos[1:]] == [i.id for i in infos[:-1]]
    for e in range(5):
        assert torch.equal(store.load(f"a@{e}")["w"], torch.full((4096,), float(e)))


def test_async_failure_is_raised_at_wait_and_next_save(store):
    store.save("a", 0, {"w": torch.ones(3)})
    store.save("a", 0, {"w": torch.zeros(3)}, blocking=False)  # a duplicate: fails in the background
    with pytest.raises(DuplicateCheckpointError):
        store.wait()
    store.save("a", 0, {"w": torch.zeros(3)}, blocking=False)
    with pytest.raises(DuplicateCheckpointError):
        store.save("a", 1, {"w": torch.zeros(3)})
    assert [i.epoch for i in store.list()] == [0]
    assert torch.equal(store.load()["w"], torch.ones(3))


def test_async_save_is_invisible_until_committed(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "s")
    store.save("a", 0, {"w": torch.ones(3)})
    gate = threading.Event()
    import ckpt.catalog.writes as commit
    real = commit.ingest

    def slow_ingest(*a, **k):
        gate.wait(60)
        return real(*a, **k)
    monkeypatch.setattr(commit, "ingest", slow_ingest)
    pending = store.save("a", 1, {"w": torch.zeros(3)}, blocking=False)
    assert [i.epoch for i in CheckpointStore(tmp_path / "s").list()] == [0]
    gate.set()
    assert pending.result(60).epoch == 1
    assert [i.epoch for i in store.list()] == [0, 1]


def test_lazy_open_reads_one_tensor(store):
    state = {"model": {"a": torch.arange(10.0), "b": torch.ones(2, 2)}, "step": 3}
    store.save("lz", 0, state)
    with store.open("lz@0") as ckpt:
        assert set(ckpt.keys()) == {"model/a", "model/b"}
        assert torch.equal(ckpt["model/a"], torch.arange(10.0))
        assert torch.equal(ckpt[("model", "b")], torch.ones(2, 2))
        assert_same(ckpt.load(), state)


def test_changes_that_bypass_autograd_are_still_saved(store):
    """Reuse of the parent's tensors is decided from the bytes, never from version counters."""
    p = torch.nn.Parameter(torch.zeros(1000))
    store.save("v", 0, {"p": p.detach()})
    p.data.add_(1.0)  # .data: the parameter's version counter does not move
    p.detach().numpy()[0] = 42.0  # numpy view: nothing in torch notices
    info = store.save("v", 1, {"p": p.detach()})
    assert info.new_bytes > 0
    back = store.load("v@1")["p"]
    assert back[0] == 42.0 and back[1] == 1.0
    same = store.save("v", 2, {"p": p.detach()})
    assert same.new_bytes == 0  # unchanged: reused from the parent without rewriting


def test_reused_tensor_from_deleted_parent_is_rewritten(store):
    frozen = torch.randn(2048)
    store.save("g", 0, {"f": frozen})
    store.delete("g@0")
    store.gc(grace_seconds=0)
    info = store.save("g", 1, {"f": frozen})
    assert info.new_bytes >= 2048 * 4
    assert torch.equal(store.load("g@1")["f"], frozen)
    assert store.verify().ok
