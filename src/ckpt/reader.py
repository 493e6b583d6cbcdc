"""Reading checkpoints back: whole states, sub-trees, and in-place restores into live tensors.

Reads go pack by pack in offset order. Runs of small tensors are read with one request into one
buffer and split (10,000 small tensors cost one read, not 10,000); large tensors are read straight
into their destination, two at a time (checksumming one overlaps reading the next). Every tensor's
bytes are checked against its checksum before it is returned.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ckpt.errors import InvalidArgumentError, KeyMismatchError
from ckpt.pools import LazyPool
from ckpt.format.manifest import Manifest, Slot, pack_path
from ckpt.format.skeleton import TensorSlot
from ckpt.format.tensors import dtype_from_name, dtype_name, empty_tensor, raw_view
from ckpt.packs import check_bytes, read_slot

MapLocation = Any

_PARALLEL_BYTES = 4 << 20
# Two reader threads: checksumming one tensor overlaps reading the next.
_read_pool = LazyPool(lambda: 2, "ckpt-read")
_SMALL = 256 << 10  # tensors up to this size are read in runs
_RUN_GAP = 64 << 10  # bytes of other tensors a run may read through
_RUN_MAX = 32 << 20


def _runs(slots: list[tuple[int, Slot]]) -> Iterable[list[tuple[int, Slot]]]:
    """Group offset-sorted small raw slots into contiguous-enough runs."""
    run: list[tuple[int, Slot]] = []
    for item in slots:
        s = item[1]
        if run:
            first, last = run[0][1], run[-1][1]
            if s.offset - (last.offset + last.length) > _RUN_GAP or s.offset + s.length - first.offset > _RUN_MAX \
                    or s.offset < last.offset:
                yield run
                run = []
        run.append(item)
    if run:
        yield run


def _read_run(reader: Any, run: list[tuple[int, Slot]], outs: Mapping[int, torch.Tensor], verify: bool | str,
              result: dict[int, torch.Tensor]) -> None:
    start = run[0][1].offset
    end = max(s.offset + s.length for _, s in run)
    buf = reader.read(start, end - start)
    view = memoryview(buf)
    for i, s in run:
        out = outs.get(i)
        if out is None:
            out = empty_tensor(s.dtype, s.shape)
        dst = raw_view(out)
        if len(dst) != s.nbytes:
            from ckpt.errors import CorruptCheckpointError
            raise CorruptCheckpointError(f"tensor {s.hash[:12]} should hold {s.nbytes} bytes for dtype {s.dtype} "
                                         f"and shape {list(s.shape)}; the manifest is damaged")
        a = s.offset - start
        dst[:] = view[a:a + s.length]
        check_bytes(dst, s, verify)
        result[i] = out


def read_slots(storage: Any, m: Manifest, wanted: Iterable[int], outs: Mapping[int, torch.Tensor] | None = None,
               *, verify: bool | str = True) -> dict[int, torch.Tensor]:
    """Read slots pack by pack in offset order; ``outs`` gives destinations to fill in place."""
    outs = outs or {}
    slots = m.slots
    by_pack: dict[str, list[int]] = {}
    for i in sorted(set(wanted)):
        by_pack.setdefault(slots[i].pack, []).append(i)
    result: dict[int, torch.Tensor] = {}
    for pack, ids in by_pack.items():
        ids.sort(key=lambda i: slots[i].offset)
        first_of_hash: dict[str, int] = {}
        todo, copies = [], []
        for i in ids:
            done = first_of_hash.get(slots[i].hash)
            if done is not None and i not in outs:
                copies.append((i, done))  # equal values, but not the same tensor
            else:
                first_of_hash.setdefault(slots[i].hash, i)
                todo.append(i)
        small = [(i, slots[i]) for i in todo if slots[i].codec == "raw" and slots[i].nbytes <= _SMALL]
        large = [i for i in todo if not (slots[i].codec == "raw" and slots[i].nbytes <= _SMALL)]
        with storage.reader(pack_path(pack)) as reader:
            for run in _runs(small):
                _read_run(reader, run, outs, verify, result)
            if reader.positional and len(large) > 1 and sum(slots[i].nbytes for i in large) >= _PARALLEL_BYTES:
                tensors = _read_pool().map(lambda i: read_slot(reader, slots[i], outs.get(i), verify=verify), large)
                result.update(zip(large, tensors))
            else:
                for i in large:
                    result[i] = read_slot(reader, slots[i], outs.get(i), verify=verify)
        for i, src in copies:
            result[i] = result[src].clone()
    return result


def _normalize_key(key: Any) -> tuple:
    if key is None:
        return ()
    if isinstance(key, tuple):
        return key
    if isinstance(key, list):
        return tuple(key)
    return (key,)


def subtree(structure: Any, path: tuple, *, what: str = "checkpoint") -> Any:
    node = structure
    for i, k in enumerate(path):
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            have = list(node.keys())[:20] if isinstance(node, Mapping) else type(node).__name__
            where = "/".join(map(str, path[:i])) or "the top level"
            raise InvalidArgumentError(f"{what} has no key {k!r} at {where}; it has {have}") from None
    return node


def fill(obj: Any, tensors: Mapping[int, Any]) -> Any:
    """Replace TensorSlot placeholders by tensors, building new containers (the structure is shared)."""
    if isinstance(obj, TensorSlot):
        return tensors[obj.slot]
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else dict()
        for k, v in obj.items():
            out[k] = fill(v, tensors)
        if hasattr(obj, "__dict__") and vars(obj):
            out.__dict__.update(vars(obj))  # OrderedDict._metadata of nn.Module state dicts
        return out
    if isinstance(obj, list):
        return [fill(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        items = [fill(v, tensors) for v in obj]
        return type(obj)(items) if type(obj) is not tuple else tuple(items)
    return obj


def slots_under(m: Manifest, path: tuple) -> list[int]:
    if not path:
        return list(range(len(m.table)))
    n = len(path)
    return sorted({slot for p, slot in m.leaves if p[:n] == path})


def to_kinds(m: Manifest, tensors: dict[int, torch.Tensor]) -> dict[int, Any]:
    """numpy slots come back as ndarrays (sharing memory with the tensor)."""
    slots = m.slots
    return {i: (t.numpy() if slots[i].kind == "numpy" else t) for i, t in tensors.items()}


def move(tensors: dict[int, torch.Tensor], m: Manifest, place: Any) -> dict[int, torch.Tensor]:
    """Tensors where ``place`` (a resolved map_location) puts them; numpy slots stay arrays on the CPU."""
    if place is None:
        return tensors
    slots = m.slots
    return {i: (t if slots[i].kind == "numpy" else place(t, "cpu")) for i, t in tensors.items()}


def load_state(storage: Any, m: Manifest, *, key: Any = None, map_location: MapLocation = None,
               verify: bool | str = True) -> Any:
    path = _normalize_key(key)
    place = None
    if map_location is not None:
        from ckpt.map_location import resolve
        place = resolve(map_location)  # checked before anything is read
    structure = subtree(m.structure(), path)
    tensors = read_slots(storage, m, slots_under(m, path), verify=verify)
    return fill(structure, to_kinds(m, move(tensors, m, place)))


def leaf_key(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def _memory(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def load_into(storage: Any, m: Manifest, target: Any, *, key: Any = "model", strict: bool = True,
              verify: bool | str = True) -> tuple[list[str], list[str], int]:
    """Fill ``target``'s existing tensors from the checkpoint sub-tree at ``key``.

    Modules and dicts are filled in place (read straight into parameter memory when it is CPU and
    contiguous); optimizers, schedulers and anything else with ``load_state_dict`` get the sub-tree.
    Tied destinations (two keys, one memory) are written once, by the last key, as load_state_dict
    does. Returns (missing, unexpected, loaded count).
    """
    path = _normalize_key(key)
    structure = m.structure()
    if path and key == "model" and isinstance(structure, Mapping) and "model" not in structure:
        path = ()  # a bare state dict was saved: the default key means "the whole thing"
    sub = subtree(structure, path)
    if not isinstance(target, (torch.nn.Module, Mapping)):
        if not hasattr(target, "load_state_dict"):
            raise InvalidArgumentError(f"load_into needs an nn.Module, a dict of tensors or an object with "
                                       f"load_state_dict, got {type(target).__name__}")
        outs = _optimizer_outs(target, m, path, sub)
        tensors = read_slots(storage, m, slots_under(m, path), outs=outs, verify=verify)
        try:
            target.load_state_dict(fill(sub, to_kinds(m, tensors)))
        except ValueError as exc:
            if isinstance(exc, InvalidArgumentError):
                raise
            where = "/".join(map(str, path)) or "the checkpoint"
            raise InvalidArgumentError(
                f"{type(target).__name__}.load_state_dict refused {where}: {exc}. Build the target like the one "
                f"that was saved (for an optimizer: the same parameter groups, the same number of parameters in "
                f"each), or pass key=... to pick another sub-tree"
                + ("; the target was left as it was" if not outs else "")) from exc
        return [], [], len(tensors)

    if isinstance(target, torch.nn.Module):
        dest = dict(target.state_dict())
    else:
        dest = {leaf_key(p): t for p, t in _tensor_leaves(target) if isinstance(t, torch.Tensor)}
    n = len(path)
    source = {leaf_key(p[n:]): slot for p, slot in m.leaves if p[:n] == path}
    slots = m.slots
    missing = [k for k in dest if k not in source]
    unexpected = [k for k in source if k not in dest]
    mismatched = [f"{k}: checkpoint {list(slots[source[k]].shape)} vs target {list(dest[k].shape)}"
                  for k in dest if k in source and tuple(dest[k].shape) != slots[source[k]].shape]
    if mismatched:
        raise KeyMismatchError(f"shape mismatch for {len(mismatched)} tensor(s): " + "; ".join(mismatched[:10]),
                               missing, unexpected, mismatched)
    if strict and (missing or unexpected):
        raise KeyMismatchError(
            f"load_into(strict=True): {len(missing)} missing key(s) {missing[:10]}, {len(unexpected)} "
            f"unexpected key(s) {unexpected[:10]}; pass strict=False to load what matches, or key=... to pick "
            f"another sub-tree", missing, unexpected)
    matched = [k for k in dest if k in source]
    if not matched:
        raise KeyMismatchError(f"no key of the checkpoint sub-tree {path or '(root)'} matches the target "
                               f"(checkpoint has {list(source)[:10]}, target has {list(dest)[:10]}); check "
                               f"key= and prefixes such as 'module.'", missing, unexpected)
    # Each destination view is written by exactly one key: the last one that maps to it (tied weights
    # are one view under two names). Different views of one storage (a flat parameter buffer) are
    # each written, through the host buffers, never read straight into.
    last_for: dict[tuple, str] = {}
    views_of: dict[tuple, set[tuple]] = {}
    for k in matched:
        mem = _memory(dest[k])
        views_of.setdefault(mem, set()).add(_view(dest[k]))
        last_for[(mem, _view(dest[k]))] = k
    shared = {mem for mem, views in views_of.items() if len(views) > 1}
    writers = [k for k in matched if last_for[(_memory(dest[k]), _view(dest[k]))] == k]
    direct: dict[int, torch.Tensor] = {}
    staged: list[tuple[str, int]] = []
    for k in writers:
        t, slot = dest[k], source[k]
        if (t.device.type == "cpu" and t.is_contiguous() and dtype_name(t.dtype) == slots[slot].dtype
                and slot not in direct and _memory(t) not in shared):
            direct[slot] = t
        else:
            staged.append((k, slot))
    with torch.no_grad():
        read_slots(storage, m, direct.keys(), outs=direct, verify=verify)
        if staged:
            fill_through_host(storage, m, staged, dest, verify=verify)
    return missing, unexpected, len(matched)


_BATCH = 128 << 20  # bytes of one host buffer; two alternate


class _HostBuffer:
    """A reusable host byte buffer (pinned when it feeds a GPU) and the copies still reading from it."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self.arena: torch.Tensor | None = None
        self.events: list[Any] = []

    def carve(self, layout: list[tuple[str, tuple]]) -> list[torch.Tensor]:
        sizes = [-(-math.prod(shape) * dtype_from_name(d).itemsize // 64) * 64 for d, shape in layout]
        if self.arena is None or self.arena.numel() < sum(sizes):
            self.arena = None
            self.arena = torch.empty(max(sum(sizes), 1), dtype=torch.uint8, pin_memory=self.pinned)
        views, off = [], 0
        for (d, shape), size in zip(layout, sizes):
            dtype = dtype_from_name(d)
            n = math.prod(shape) * dtype.itemsize
            views.append(self.arena[off:off + n].view(dtype).view(shape))
            off += size
        return views

    def record(self, devices: set[Any]) -> None:
        self.events = []
        for device in devices:
            with torch.cuda.device(device):
                event = torch.cuda.Event()
                event.record()
                self.events.append(event)

    def wait(self) -> None:
        for event in self.events:
            event.synchronize()
        self.events = []


_buffers: dict[bool, list[_HostBuffer]] = {}
_buffers_lock = threading.Lock()


def _take_buffers(pinned: bool) -> list[_HostBuffer]:
    with _buffers_lock:
        pair = _buffers.pop(pinned, None)
    return pair or [_HostBuffer(pinned), _HostBuffer(pinned)]


def _give_back(pinned: bool, pair: list[_HostBuffer]) -> None:
    """Keep pinned buffers for the next load (pinning costs more than copying); let plain memory go."""
    if not pinned:
        return
    for buf in pair:
        if buf.arena is not None and buf.arena.numel() > 2 * _BATCH:
            buf.arena = None  # one huge tensor needed it: not worth holding pinned
    with _buffers_lock:
        _buffers.setdefault(pinned, pair)


def fill_through_host(storage: Any, m: Manifest, staged: list[tuple[str, int]], dest: Mapping[str, torch.Tensor],
                      *, verify: bool | str = True) -> None:
    """Fill destinations that cannot be read into directly (on a GPU, another dtype, a view, a storage
    shared by several keys) through two reused host buffers of bounded size, batch by batch in file
    order: memory stays flat however large the model, and for GPU destinations the buffers are pinned,
    so each batch's copies to the device run asynchronously while the next batch is read."""
    slots = m.slots
    keys_of: dict[int, list[str]] = {}
    for k, slot in staged:
        keys_of.setdefault(slot, []).append(k)
    order = sorted(keys_of, key=lambda i: (slots[i].pack, slots[i].offset))
    batches: list[list[int]] = [[]]
    size = 0
    for i in order:
        if batches[-1] and size + slots[i].nbytes > _BATCH:
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += slots[i].nbytes
    gpu = any(dest[k].device.type == "cuda" for k, _ in staged)
    pair = _take_buffers(gpu)
    try:
        for n, batch in enumerate(batches):
            buf = pair[n % 2]
            buf.wait()  # the device copies out of this buffer (two batches ago) have finished
            views = buf.carve([(slots[i].dtype, slots[i].shape) for i in batch])
            read_slots(storage, m, batch, outs=dict(zip(batch, views)), verify=verify)
            devices = set()
            for i, view in zip(batch, views):
                for k in keys_of[i]:
                    target = dest[k]
                    on_gpu = target.device.type == "cuda"
                    target.copy_(view, non_blocking=on_gpu and buf.pinned)
                    if on_gpu:
                        devices.add(target.device)
            if devices:
                buf.record(devices)
    finally:
        for buf in pair:
            buf.wait()  # also after a failure: no copy may still read a buffer that is handed on
        _give_back(gpu, pair)


def _optimizer_outs(target: Any, m: Manifest, path: tuple, sub: Any) -> dict[int, torch.Tensor]:
    """An optimizer's existing state tensors that the checkpoint's can be read straight into.

    ``Optimizer.load_state_dict`` keeps tensors whose dtype and device already match, so reading into
    the live state (moments of a resumed or rolled-back run) spares allocating and faulting in fresh
    memory as large as the state. A fresh optimizer has no state: everything is allocated as before."""
    if not isinstance(target, torch.optim.Optimizer):
        return {}
    live = target.state_dict()
    if not _same_groups(live, sub):  # load_state_dict will refuse it: leave the live state untouched
        return {}
    current = {p: t for p, t in _tensor_leaves(live) if isinstance(t, torch.Tensor)}
    if not current:
        return {}
    n = len(path)
    slots = m.slots
    outs: dict[int, torch.Tensor] = {}
    taken: set[tuple] = set()
    for p, slot in m.leaves:
        t = current.get(p[n:]) if p[:n] == path else None
        if t is None or slot in outs:
            continue
        s = slots[slot]
        if (t.device.type == "cpu" and t.is_contiguous() and t.numel() and tuple(t.shape) == tuple(s.shape)
                and dtype_name(t.dtype) == s.dtype and _memory(t) not in taken):
            outs[slot] = t
            taken.add(_memory(t))
    return outs


def _same_groups(live: Mapping, saved: Any) -> bool:
    """Whether ``Optimizer.load_state_dict`` would accept ``saved``'s parameter groups (same number of
    groups, same number of parameters in each), checked before anything is written in place."""
    try:
        mine, theirs = live["param_groups"], saved["param_groups"]
        return len(mine) == len(theirs) and all(len(a["params"]) == len(b["params"]) for a, b in zip(mine, theirs))
    except (KeyError, TypeError):
        return False


def _view(t: torch.Tensor) -> tuple:
    return (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _tensor_leaves(obj: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensor_leaves(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensor_leaves(v, path + (i,))
    else:
        yield path, obj
