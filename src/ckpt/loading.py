"""Reading checkpoints back: whole states, sub-trees, and in-place restores into live tensors."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ckpt.blobs import BlobStore
from ckpt.errors import InvalidArgumentError, KeyMismatchError
from ckpt.serialization import manifest as mf
from ckpt.serialization.packs import read_slot
from ckpt.serialization.skeleton import TensorSlot, load_structure
from ckpt.serialization.tensors import dtype_name

MapLocation = str | torch.device | None


_PARALLEL_BYTES = 4 << 20


def read_manifest(blobs: BlobStore, checkpoint_id: str) -> mf.Manifest:
    return mf.loads(blobs.read(mf.path_for(checkpoint_id), mf.MAX_MANIFEST_BYTES), expected_id=checkpoint_id)


def read_slots(blobs: BlobStore, m: mf.Manifest, wanted: Iterable[int],
               outs: Mapping[int, torch.Tensor] | None = None, *, verify: bool | str = True) -> dict[int, torch.Tensor]:
    """Read slots pack by pack in offset order; ``outs`` gives destinations to fill in place.

    Two reads run at once (positional reads on one descriptor; checksumming one tensor overlaps reading
    the next), which keeps a cold disk streaming and a hot page cache busy on both cores.
    """
    outs = outs or {}
    by_pack: dict[str, list[int]] = {}
    for i in sorted(set(wanted)):
        by_pack.setdefault(m.slots[i].pack, []).append(i)
    result: dict[int, torch.Tensor] = {}
    for pack, ids in by_pack.items():
        ids.sort(key=lambda i: m.slots[i].offset)
        first_of_hash: dict[str, int] = {}
        todo, copies = [], []
        for i in ids:
            done = first_of_hash.get(m.slots[i].hash)
            if done is not None and i not in outs:
                copies.append((i, done))  # equal values, but not the same tensor
            else:
                first_of_hash.setdefault(m.slots[i].hash, i)
                todo.append(i)
        with blobs.open_reader(mf.pack_path(pack)) as reader:
            if reader.positional and len(todo) > 1 and sum(m.slots[i].nbytes for i in todo) >= _PARALLEL_BYTES:
                with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckpt-read") as pool:
                    tensors = pool.map(lambda i: read_slot(reader, m.slots[i], outs.get(i), verify=verify), todo)
                    result.update(zip(todo, tensors))
            else:
                for i in todo:
                    result[i] = read_slot(reader, m.slots[i], outs.get(i), verify=verify)
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


def fill(obj: Any, tensors: Mapping[int, torch.Tensor]) -> Any:
    """Replace TensorSlot placeholders by tensors, rebuilding containers (tuples are immutable)."""
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
    if isinstance(obj, (set, frozenset)):
        return obj
    return obj


def slots_under(m: mf.Manifest, path: tuple) -> list[int]:
    n = len(path)
    return sorted({slot for p, slot in m.leaves if p[:n] == path})


def to_kinds(m: mf.Manifest, tensors: dict[int, torch.Tensor]) -> dict[int, Any]:
    """numpy slots come back as ndarrays (sharing memory with the tensor)."""
    return {i: (t.numpy() if m.slots[i].kind == "numpy" else t) for i, t in tensors.items()}


def move(tensors: dict[int, torch.Tensor], m: mf.Manifest, map_location: MapLocation) -> dict[int, torch.Tensor]:
    if map_location is None:
        return tensors
    if callable(map_location) or isinstance(map_location, dict):
        raise InvalidArgumentError("map_location must be a device (e.g. 'cpu', 'cuda:0' or torch.device)")
    device = torch.device(map_location)
    if device.type == "cpu":
        return tensors
    return {i: (t if m.slots[i].kind == "numpy" else t.to(device, non_blocking=True)) for i, t in tensors.items()}


def load_state(blobs: BlobStore, m: mf.Manifest, *, key: Any = None, map_location: MapLocation = None,
               verify: bool | str = True) -> Any:
    path = _normalize_key(key)
    structure = subtree(load_structure(m.skeleton), path)
    tensors = read_slots(blobs, m, slots_under(m, path), verify=verify)
    return fill(structure, to_kinds(m, move(tensors, m, map_location)))


def leaf_key(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def load_into(blobs: BlobStore, m: mf.Manifest, target: Any, *, key: Any = "model", strict: bool = True,
              verify: bool | str = True) -> tuple[list[str], list[str], int]:
    """Fill ``target``'s existing tensors from the checkpoint sub-tree at ``key``.

    Modules and dicts are filled in place (read straight into parameter memory when it is CPU and
    contiguous); optimizers, schedulers and anything else with ``load_state_dict`` get the sub-tree.
    Returns (missing, unexpected, loaded count).
    """
    path = _normalize_key(key)
    structure = load_structure(m.skeleton)
    if path and key == "model" and isinstance(structure, Mapping) and "model" not in structure:
        path = ()  # a bare state dict was saved: the default key means "the whole thing"
    sub = subtree(structure, path)
    if not isinstance(target, (torch.nn.Module, Mapping)):
        if not hasattr(target, "load_state_dict"):
            raise InvalidArgumentError(f"load_into needs an nn.Module, a dict of tensors or an object with "
                                       f"load_state_dict, got {type(target).__name__}")
        tensors = read_slots(blobs, m, slots_under(m, path), verify=verify)
        target.load_state_dict(fill(sub, to_kinds(m, tensors)))
        return [], [], len(tensors)

    if isinstance(target, torch.nn.Module):
        dest = dict(target.state_dict())
    else:
        dest = {leaf_key(p): t for p, t in _tensor_leaves(target) if isinstance(t, torch.Tensor)}
    n = len(path)
    source = {leaf_key(p[n:]): slot for p, slot in m.leaves if p[:n] == path}
    missing = [k for k in dest if k not in source]
    unexpected = [k for k in source if k not in dest]
    mismatched = [f"{k}: checkpoint {list(m.slots[source[k]].shape)} vs target {list(dest[k].shape)}"
                  for k in dest if k in source and tuple(dest[k].shape) != m.slots[source[k]].shape]
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
    direct: dict[int, torch.Tensor] = {}
    staged: list[tuple[str, int]] = []
    for k in matched:
        t, slot = dest[k], source[k]
        if (t.device.type == "cpu" and t.is_contiguous() and dtype_name(t.dtype) == m.slots[slot].dtype
                and slot not in direct and not t.requires_grad):
            direct[slot] = t
        else:
            staged.append((k, slot))
    with torch.no_grad():
        read_slots(blobs, m, direct.keys(), outs=direct, verify=verify)
        if staged:
            loaded = read_slots(blobs, m, {s for _, s in staged}, verify=verify)
            for k, slot in staged:
                dest[k].copy_(loaded[slot])
    return missing, unexpected, len(matched)


def _tensor_leaves(obj: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensor_leaves(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensor_leaves(v, path + (i,))
    else:
        yield path, obj
