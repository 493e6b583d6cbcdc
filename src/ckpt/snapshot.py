"""Turn a training state into what a save writes: skeleton bytes plus contiguous CPU tensors.

This is the part of a save that must happen before the call returns (the training loop may change
its tensors right after). Hashing and writing happen later, in ckpt.writer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ckpt.format.skeleton import flatten
from ckpt.format.tensors import check_supported, contiguous_cpu, dtype_name, raw_view
from ckpt.staging import Staging


@dataclass
class SlotData:
    tensor: torch.Tensor  # contiguous CPU tensor holding the bytes
    dtype: str
    shape: tuple[int, ...]
    kind: str
    path: tuple  # the first key path that refers to this slot
    stable: bool = False  # the snapshot owns these bytes (a copy): nobody else can change them
    _data: memoryview | None = None

    @property
    def data(self) -> memoryview:
        """The raw bytes (made on first use: not on the blocking path of an async save)."""
        if self._data is None:
            self._data = raw_view(self.tensor)
        return self._data

    @functools.cached_property
    def nbytes(self) -> int:  # asked several times per tensor on a save's path: computed once
        return self.tensor.nbytes


@dataclass
class Snapshot:
    skeleton: bytes
    slots: list[SlotData]
    leaves: list[tuple[tuple, int]]

    @property
    def logical_size(self) -> int:
        return sum(s.nbytes for s in self.slots)


def describe(path: tuple) -> str:
    return "/".join(str(k) for k in path) or "<root>"


def take(state: Any, staging: Staging | None = None, *, device_staging: Staging | None = None) -> Snapshot:
    """Flatten ``state``; with ``staging``, copy every tensor into reusable buffers (async saves).

    Without it, CPU tensors are read where they are and, with ``device_staging``, GPU tensors are
    copied into its pinned buffers in one fused asynchronous copy (one synchronize) instead of one
    pageable, synchronous ``.cpu()`` per tensor; the buffers are kept for the next save.
    """
    flat = flatten(state)
    first_path: dict[int, tuple] = {}
    for path, slot in flat.leaves:
        first_path.setdefault(slot, path)
    for slot, t in enumerate(flat.tensors):
        check_supported(t, describe(first_path.get(slot, ())))
    if staging is not None:
        tensors = staging.stage(flat.tensors)
        stable = [True] * len(tensors)
    else:
        tensors = [None] * len(flat.tensors)  # type: ignore[list-item]
        on_gpu = [i for i, t in enumerate(flat.tensors) if t.device.type == "cuda"]
        if on_gpu and device_staging is not None:
            for i, copy in zip(on_gpu, device_staging.stage([flat.tensors[i].detach() for i in on_gpu])):
                tensors[i] = copy
        for i, t in enumerate(flat.tensors):
            if tensors[i] is None:
                tensors[i] = contiguous_cpu(t)
        # A copy (from a GPU, or of a non-contiguous view) is ours; the caller's own memory is not.
        stable = [out.data_ptr() != t.data_ptr() or t.device.type != "cpu" for out, t in zip(tensors, flat.tensors)]
    slots = [SlotData(t, dtype_name(t.dtype), tuple(t.shape), kind, first_path.get(i, ()), st)
             for i, (t, kind, st) in enumerate(zip(tensors, flat.kinds, stable))]
    return Snapshot(flat.skeleton, slots, list(flat.leaves))
