"""Turn a training state into what a save writes: skeleton bytes plus hashed, contiguous CPU tensors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ckpt.serialization.skeleton import flatten
from ckpt.serialization.tensors import byte_view, check_supported, contiguous_cpu, dtype_name, tensor_hash

_PARALLEL_HASH_BYTES = 8 << 20


@dataclass
class SlotData:
    tensor: torch.Tensor  # contiguous CPU tensor holding the bytes (keeps `data` alive)
    data: memoryview
    dtype: str
    shape: tuple[int, ...]
    hash: str
    kind: str


@dataclass
class Snapshot:
    skeleton: bytes
    slots: list[SlotData]
    leaves: list[tuple[tuple, int]]

    @property
    def logical_size(self) -> int:
        return sum(len(s.data) for s in self.slots)


def _describe(path: tuple) -> str:
    return "/".join(str(k) for k in path) or "<root>"


def take(state: Any) -> Snapshot:
    """Flatten ``state`` and hash every tensor slot (large ones on a thread pool: blake3 drops the GIL)."""
    flat = flatten(state)
    first_path: dict[int, tuple] = {}
    for path, slot in flat.leaves:
        first_path.setdefault(slot, path)
    prepared = []
    for slot, (t, kind) in enumerate(zip(flat.tensors, flat.kinds)):
        check_supported(t, _describe(first_path.get(slot, ())))
        c = contiguous_cpu(t)
        prepared.append((c, byte_view(c), dtype_name(c.dtype), tuple(c.shape), kind))

    def _hash(item: tuple) -> str:
        _, data, dtype, shape, _ = item
        return tensor_hash(dtype, shape, data)

    total = sum(len(p[1]) for p in prepared)
    if total >= _PARALLEL_HASH_BYTES and len(prepared) > 1:
        with ThreadPoolExecutor(max_workers=2) as pool:
            hashes = list(pool.map(_hash, prepared))
    else:
        hashes = [_hash(p) for p in prepared]
    slots = [SlotData(c, data, dtype, shape, h, kind)
             for (c, data, dtype, shape, kind), h in zip(prepared, hashes)]
    return Snapshot(flat.skeleton, slots, list(flat.leaves))
