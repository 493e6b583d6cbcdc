"""Tensor-aware diff of two checkpoints. Equal hashes mean equal tensors, so only changed ones are read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ckpt.reader import read_slots
from ckpt.records import CheckpointDiff, CheckpointInfo, TensorChange
from ckpt.format import manifest as mf
from ckpt.format.skeleton import TensorSlot

ABSENT = "<absent>"


def _key(path: tuple) -> str:
    return "/".join(str(k) for k in path)


def _values(obj: Any, path: tuple = ()) -> dict[str, Any]:
    """Non-tensor leaves by path (containers are walked, tensors skipped)."""
    out: dict[str, Any] = {}
    if isinstance(obj, TensorSlot):
        return out
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(_values(v, path + (k,)))
    elif isinstance(obj, (list, tuple)) and not all(isinstance(v, (int, float, str, bool, type(None)))
                                                    for v in obj):
        for i, v in enumerate(obj):
            out.update(_values(v, path + (i,)))
    else:
        out[_key(path)] = obj
    return out


def _change(a: torch.Tensor, b: torch.Tensor) -> tuple[float | None, float | None]:
    if a.numel() == 0:
        return 0.0, 0.0
    if a.dtype.is_complex:
        a, b = a.to(torch.complex128), b.to(torch.complex128)
    else:
        a, b = a.to(torch.float64), b.to(torch.float64)
    d = (a - b).abs()
    max_abs = float(d.max())
    norm = float(torch.linalg.vector_norm(a))
    rel = float(torch.linalg.vector_norm(a - b)) / norm if norm else None
    return max_abs, rel


def diff_checkpoints(blobs: Any, ia: CheckpointInfo, ib: CheckpointInfo, ma: mf.Manifest,
                     mb: mf.Manifest) -> CheckpointDiff:
    result = CheckpointDiff(ia, ib)
    la = {_key(p): s for p, s in ma.leaves}
    lb = {_key(p): s for p, s in mb.leaves}
    result.only_a = [k for k in la if k not in lb]
    result.only_b = [k for k in lb if k not in la]
    for k in la:
        if k not in lb:
            continue
        sa, sb = ma.slots[la[k]], mb.slots[lb[k]]
        if (sa.dtype, sa.shape) != (sb.dtype, sb.shape):
            result.shape_or_dtype.append((k, f"{sa.dtype}{list(sa.shape)}", f"{sb.dtype}{list(sb.shape)}"))
        elif sa.hash == sb.hash:
            result.identical += 1
        else:
            ta = read_slots(blobs, ma, [la[k]])[la[k]]
            tb = read_slots(blobs, mb, [lb[k]])[lb[k]]
            max_abs, rel = _change(ta, tb)
            result.changed.append(TensorChange(k, max_abs, rel))
    va, vb = _values(ma.structure()), _values(mb.structure())
    for k in list(va) + [k for k in vb if k not in va]:
        x, y = va.get(k, ABSENT), vb.get(k, ABSENT)
        try:
            same = bool(x == y) or (x != x and y != y)
        except Exception:
            same = repr(x) == repr(y)
        if not same:
            result.values.append((k, x, y))
    for name in list(ia.metrics) + [n for n in ib.metrics if n not in ia.metrics]:
        result.metrics[name] = (ia.metrics.get(name), ib.metrics.get(name))
    return result
