"""Reusable host buffers that async saves copy tensors into, so training can go on at once.

One byte arena is carved into per-slot views (64-byte aligned) and kept between saves; it grows only
when a checkpoint outgrows it. For CUDA tensors the arena is pinned and copies are asynchronous,
finished by one synchronize before the save call returns.
"""

from __future__ import annotations

import torch

_ALIGN = 64


class Staging:
    def __init__(self) -> None:
        self._arena: torch.Tensor | None = None

    def stage(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of ``tensors`` in the arena (contiguous, CPU); valid until the next call."""
        offsets, total = [], 0
        for t in tensors:
            offsets.append(total)
            total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        cuda = any(t.device.type == "cuda" for t in tensors)
        if self._arena is None or self._arena.numel() < total or (cuda and not self._arena.is_pinned()):
            self._arena = None  # release the old arena before allocating the new one
            self._arena = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=cuda)
        out = []
        for t, off in zip(tensors, offsets):
            n = t.numel() * t.element_size()
            dst = self._arena[off:off + n].view(t.dtype).view(t.shape)
            dst.copy_(t.detach().resolve_conj().resolve_neg(), non_blocking=t.device.type == "cuda")
            out.append(dst)
        if cuda:
            torch.cuda.synchronize()
        return out

    def release(self) -> None:
        self._arena = None
