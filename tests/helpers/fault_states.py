"""Deterministic training states for the fault tests, shared by the test processes and their helpers.

Every tensor is a pure function of its arguments (a ``torch.Generator`` seeded from them), so the test
can recompute exactly what a killed writer was saving and compare bit for bit.
"""

from __future__ import annotations

import functools
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


def randn(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float32).to(dtype)


# -- kill loop (test_crash.py) ------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _frozen() -> tuple[torch.Tensor, torch.Tensor]:
    # Frozen in every epoch: stored once, then deduplicated by every later save.
    return randn(MiB, 1_000_003).reshape(1024, 1024), randn(MiB // 4, 1_000_033)


def crash_state(epoch: int) -> dict:
    """About 7 MiB: 5 MiB frozen (4 + 1 MiB float32), ~3.1 MiB new every epoch (float32 + float16)."""
    embed, head = _frozen()
    return {
        "model": {
            "embed": embed.clone(),                                   # 4 MiB, frozen
            "head": head.clone(),                                     # 1 MiB, frozen
            "w": randn(MiB // 2, 10 * epoch + 1).reshape(512, 1024),  # 2 MiB, changes
            "b": randn(4096, 10 * epoch + 2, torch.float16),          # 8 KiB float16, changes
        },
        "optimizer": {"exp_avg": randn(MiB // 4, 10 * epoch + 3)},    # 1 MiB, changes
        "epoch": epoch,
    }


def crash_metrics(epoch: int) -> dict:
    return {"loss": 1.0 / (epoch + 1)}


# -- concurrency (test_concurrency.py) ----------------------------------------------------------
def shared_base() -> torch.Tensor:
    """4 MiB, identical in every process."""
    return randn(MiB, 424_242)


def worker_state(idx: int, rnd: int) -> dict:
    return {"base": shared_base(), "own": randn(MiB // 4, 5000 + 100 * rnd + idx),
            "meta": {"idx": idx, "round": rnd}}


def dup_state(idx: int, k: int) -> dict:
    return {"base": shared_base(), "own": randn(MiB // 8, 9000 + 10 * k + idx), "writer": idx}


# -- commit steps (test_commit_steps.py) --------------------------------------------------------
def step_state(n: int) -> dict:
    """Checkpoint n of run "r": a frozen tensor shared by all n and tensors new in each n."""
    return {"frozen": randn(MiB // 2, 77), "w": randn(MiB // 4, 100 + n),
            "extra": [randn(1000, 200 + n, torch.bfloat16), torch.arange(n + 3)], "n": n}


# -- comparison ---------------------------------------------------------------------------------
def assert_bit_exact(got, want, path: str = "root") -> None:
    """Same structure, same types, same dtypes and shapes, same bits."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype, f"{path}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{path}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)), \
            f"{path}: tensor bits differ"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_bit_exact(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_bit_exact(a, b, f"{path}/{i}")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


# -- store inspection (files on disk, bypassing the API) ----------------------------------------
def temp_files(store_dir: str) -> list[str]:
    """Every temp file (``.NAME.tmp-PID-XXXX``) anywhere under the store."""
    out = []
    for root, _dirs, files in os.walk(store_dir):
        out += [os.path.relpath(os.path.join(root, f), store_dir) for f in files if ".tmp-" in f]
    return sorted(out)


def pack_files(store_dir: str) -> set[str]:
    d = os.path.join(store_dir, "packs")
    return {f[:-len(".safetensors")] for f in os.listdir(d)
            if f.endswith(".safetensors") and not f.startswith(".")}


def manifest_files(store_dir: str) -> set[str]:
    d = os.path.join(store_dir, "manifests")
    return {f.rsplit(".", 1)[0] for f in os.listdir(d) if f.endswith((".ckpt", ".json")) and not f.startswith(".")}


def referenced_packs(store) -> set[str]:
    """Packs named by the manifests of committed checkpoints."""
    out: set[str] = set()
    for info in store.list():
        out |= {s.pack for s in store.manifest(info.id).slots}
    return out


def non_committed_rows(store) -> list[tuple[str, str]]:
    """(id, status) of index rows that are not committed (pending saves, half-done deletes)."""
    from sqlalchemy import select

    from ckpt.catalog.schema import Checkpoint
    with store.index.read() as s:
        rows = s.scalars(select(Checkpoint).where(Checkpoint.status != "committed"))
        return [(r.id, r.status) for r in rows]
