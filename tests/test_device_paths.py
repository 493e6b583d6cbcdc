"""Loading into tensors that cannot be read into directly, and saving from a GPU.

Destinations on a GPU, of another dtype, non-contiguous, or sharing one storage are filled through two
reused host buffers, batch by batch: the CPU tests drive that pipeline with batches made small, so a
model crosses many buffer swaps; the ``gpu`` tests (skipped without CUDA, run by scripts/gpu-check.sh)
do the same into CUDA tensors through pinned buffers with asynchronous copies.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckpt import CheckpointStore, CorruptCheckpointError
from ckpt import reader

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 300), nn.LayerNorm(300), nn.Linear(300, 10))


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(reader, "_BATCH", 50_000)  # ~10 batches for the model above


def test_load_into_another_dtype_crosses_many_host_buffers(store, small_batches):
    src = _model(0)
    store.save("r", 0, {"model": src.state_dict()})
    dst = _model(1).to(torch.bfloat16)
    store.load_into(dst)
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b), name


def test_load_into_views_and_shared_storage(store, small_batches):
    big = torch.arange(200_000, dtype=torch.float32)
    state = {"a": big[:100_000].clone(), "b": big[100_000:].clone(), "t": torch.randn(300, 200)}
    store.save("r", 0, state)
    flat = torch.zeros(200_000)
    dest = {"a": flat[:100_000], "b": flat[100_000:], "t": torch.zeros(200, 300).t()}  # one storage; a view
    store.load_into(dest, key=None)
    assert torch.equal(flat, big) and torch.equal(dest["t"], state["t"])


def test_a_failed_batch_leaves_the_buffers_usable(store, small_batches, tmp_path):
    src = _model(0)
    info = store.save("r", 0, {"model": src.state_dict()})
    dst = _model(1).to(torch.float64)
    pack = max((tmp_path / "store" / "packs").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError):
        store.load_into(dst, info.id)
    store.save("r", 1, {"model": _model(2).state_dict()})
    good = _model(3).to(torch.float64)
    store.load_into(good, "r@1")
    for (name, a), b in zip(_model(2).state_dict().items(), good.state_dict().values()):
        assert torch.equal(a.double(), b), name


@pytest.mark.gpu
@needs_cuda
def test_load_into_cuda_model_through_pinned_buffers(store, small_batches):
    src = _model(0)
    store.save("r", 0, {"model": src.state_dict()})
    dst = _model(1).cuda()
    store.load_into(dst)
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert b.is_cuda and torch.equal(a, b.cpu()), name
    assert reader._buffers.get(True), "the pinned buffers are kept for the next load"
    assert all(b.arena is None or b.arena.is_pinned() for b in reader._buffers[True])
    half = _model(1).cuda().half()
    store.load_into(half)
    for (name, a), b in zip(src.state_dict().items(), half.state_dict().values()):
        assert torch.equal(a.half(), b.cpu()), name


@pytest.mark.gpu
@needs_cuda
def test_save_from_cuda_reuses_pinned_staging_and_round_trips(tmp_path):
    with CheckpointStore(tmp_path / "s") as store:
        model = _model(0).cuda()
        opt = torch.optim.AdamW(model.parameters())
        model(torch.randn(4, 64, device="cuda")).sum().backward()
        opt.step()
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.cuda.get_rng_state()}
        store.save("r", 0, state)
        staging = store._device_staging.value
        arena = staging._arena
        assert arena is not None and arena.is_pinned()
        store.save("r", 1, state)
        assert staging._arena.data_ptr() == arena.data_ptr(), "the second save reuses the pinned buffers"
        back = store.load("r@1")
        for k, v in model.state_dict().items():
            assert torch.equal(back["model"][k], v.cpu()), k
        assert torch.equal(back["rng"], state["rng"])
        on_gpu = store.load("r@1", map_location="cuda:0")
        assert on_gpu["model"]["0.weight"].is_cuda
