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
        self._layout: tuple | None = None  # (dtype, shape) per tensor of the views below
        self._views: list[torch.Tensor] = []

    def _carve(self, tensors: list[torch.Tensor], layout: tuple, cuda: bool) -> None:
        offsets, total = [], 0
        for t in tensors:
            offsets.append(total)
            total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        if self._arena is None or self._arena.numel() < total or (cuda and not self._arena.is_pinned()):
            self._arena = self._views = None  # type: ignore[assignment]  # free the old one first
            self._arena = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=cuda)
        self._views = [self._arena[off:off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
                       for t, off in zip(tensors, offsets)]
        self._layout = layout

    def stage(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of ``tensors`` in the arena (contiguous, CPU); valid until the next call.

        A training loop saves the same layout every time, so the views are carved once and every later
        save is a single fused copy.
        """
        cuda = any(t.device.type == "cuda" for t in tensors)
        layout = tuple((t.dtype, t.shape) for t in tensors)
        if layout != self._layout or (cuda and not self._arena.is_pinned()):  # type: ignore[union-attr]
            self._carve(tensors, layout, cuda)
        sources = [t.resolve_conj().resolve_neg() if t.is_conj() or t.is_neg() else t for t in tensors]
        if sources:
            with torch.no_grad():
                torch._foreach_copy_(self._views, sources, non_blocking=cuda)
        if cuda:
            torch.cuda.synchronize()
        return list(self._views)

    def release(self) -> None:
        self._arena, self._layout, self._views = None, None, []
