"""Tensor-aware diff of two checkpoints. Equal hashes mean equal tensors, so only changed ones are read.

:func:`summarize` condenses the training loop's own bookkeeping (RNG states, the metric history, the
data order), which changes at every save, into one line per kind, so that a diff shows what a person
changed (weights, hyperparameters) rather than 624-integer generator states.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ckpt.reader import read_slots
from ckpt.records import CheckpointDiff, CheckpointInfo, TensorChange
from ckpt.format import manifest as mf
from ckpt.format.skeleton import TensorSlot

ABSENT = "<absent>"


def value_text(v: Any, width: int) -> str:
    """A changed value on one line: its repr, or for a longer one its type and length (a cut repr when
    it has no length). Not escaped: the terminal and the web page each escape for themselves."""
    if isinstance(v, str) and v == ABSENT:
        return "(absent)"
    text = repr(v)
    if len(text) <= width:
        return text
    try:
        return f"<{type(v).__name__} of {len(v)}>"
    except TypeError:
        return text[:width - 3] + "..."


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


def under(key: str, prefix: str | None) -> bool:
    """Whether ``key`` ("model/fc/weight") is ``prefix`` or below it; every key is below None."""
    return prefix is None or key == prefix or key.startswith(prefix + "/")


def diff_checkpoints(blobs: Any, ia: CheckpointInfo, ib: CheckpointInfo, ma: mf.Manifest,
                     mb: mf.Manifest, *, only: tuple | None = None) -> CheckpointDiff:
    """``only``: a key path (``("model",)``); the tensors and values outside it are neither read nor
    compared (metrics are always compared)."""
    result = CheckpointDiff(ia, ib)
    prefix = _key(only) if only else None
    la = {_key(p): s for p, s in ma.leaves if under(_key(p), prefix)}
    lb = {_key(p): s for p, s in mb.leaves if under(_key(p), prefix)}
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
    va = {k: v for k, v in va.items() if under(k, prefix)}
    vb = {k: v for k, v in vb.items() if under(k, prefix)}
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


# -- summary ----------------------------------------------------------------------------------------

_RNG = re.compile(r"rng|random_state|^random$", re.I)
_DATA_ORDER = {"sampler", "sampler_state", "generators", "data_order", "epoch_start", "train_subset", "shuffle"}
_HISTORY = {"history", "log_history"}
_WRAPPERS = {"state", "data", "tensors", "kind"}  # container levels that name no generator


@dataclass
class StateChange:
    """One line of a diff summary: a kind of bookkeeping state that changed, and the keys behind it."""

    kind: str  # "rng" | "history" | "data order"
    text: str  # "rng: numpy, python, torch changed (5,064 bytes)"
    keys: list[str] = field(default_factory=list)


def state_kind(key: str) -> str | None:
    """Which bookkeeping state ``key`` belongs to ("rng", "history", "data order"), or None."""
    parts = key.split("/")
    for n, p in enumerate(parts):
        if _RNG.search(p):
            return "rng"
        if p in _HISTORY and (n + 1 == len(parts) or parts[n + 1].isdigit()):
            return "history"
        if p in _DATA_ORDER:
            return "data order"
    return "data order" if parts[0] == "data" and len(parts) > 1 else None


def _generator(key: str) -> str:
    parts = key.split("/")
    at = next(n for n, p in enumerate(parts) if _RNG.search(p))
    rest = [p for p in parts[at + 1:] if p not in _WRAPPERS and not p.isdigit()]
    return rest[0] if rest else parts[at]


def summarize(d: CheckpointDiff, nbytes: Mapping[str, int] | None = None) -> list[StateChange]:
    """One line per kind of bookkeeping state that changed; ``nbytes`` (key -> tensor bytes) sizes the
    RNG line. The keys listed in each StateChange are the ones a report may leave out of its lists."""
    nbytes = nbytes or {}
    tensors = [c.key for c in d.changed] + [k for k, _, _ in d.shape_or_dtype]
    keys: dict[str, list[str]] = {}
    for k in [*tensors, *d.only_a, *d.only_b, *(k for k, _, _ in d.values)]:
        kind = state_kind(k)
        if kind is not None:
            keys.setdefault(kind, []).append(k)
    out = []
    if "rng" in keys:
        names = sorted(dict.fromkeys(_generator(k) for k in keys["rng"]))
        size = sum(nbytes.get(k, 0) for k in keys["rng"])
        out.append(StateChange("rng", f"rng: {', '.join(names)} changed" + (f" ({size:,} bytes)" if size else ""),
                               keys["rng"]))
    if "history" in keys:
        out.append(StateChange("history", "history: " + _history_line(d, keys["history"]), keys["history"]))
    if "data order" in keys:
        where = list(dict.fromkeys("/".join(k.split("/")[:2]) for k in keys["data order"]))
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        out.append(StateChange("data order", f"data order: changed ({shown})", keys["data order"]))
    return out


def _history_line(d: CheckpointDiff, keys: Iterable[str]) -> str:
    """``+3 epochs``, ``-1 epoch``, ``2 epochs rewritten``: entries added, dropped or changed."""
    values = {k: (a, b) for k, a, b in d.values}
    entries: dict[tuple[str, int], list[tuple[Any, Any]]] = {}
    epochs = False
    for k in keys:
        parts = k.split("/")
        n = next((i for i, p in enumerate(parts) if p in _HISTORY and i + 1 < len(parts) and parts[i + 1].isdigit()),
                 None)
        if n is None:  # an empty history on one side: a bare leaf, counted through the other side's entries
            continue
        entry = ("/".join(parts[:n + 1]), int(parts[n + 1]))
        entries.setdefault(entry, []).append(values.get(k, (None, None)))
        epochs = epochs or parts[n + 2:] == ["epoch"]
    added = sum(1 for v in entries.values() if all(isinstance(a, str) and a == ABSENT for a, _ in v))
    dropped = sum(1 for v in entries.values() if all(isinstance(b, str) and b == ABSENT for _, b in v))
    changed = len(entries) - added - dropped
    unit = "epoch" if epochs else "entry"

    def count(n: int) -> str:
        return f"{n} {unit}" if n == 1 else f"{n} {'epochs' if epochs else 'entries'}"
    parts_out = []
    if added:
        parts_out.append(f"+{count(added)}")
    if dropped:
        parts_out.append(f"-{count(dropped)}")
    if changed:
        parts_out.append(f"{count(changed)} rewritten")
    return ", ".join(parts_out) or "changed"
