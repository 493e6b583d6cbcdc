"""Format-1 manifests (``manifests/<id>.json``): read forever, written only by tests and golden stores.

One JSON document with a per-tensor slot object, the key path of every tensor leaf and the base64
skeleton. ``loads`` gives the same :class:`ckpt.format.manifest.Manifest` as format 2.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import blake3

from ckpt.errors import CorruptCheckpointError
from ckpt.format.dtypes import ITEMSIZE
from ckpt.format.manifest import Manifest, Slot, SlotTable, check_header

FORMAT = 1
CODECS = ("raw", "zstd")
KINDS = ("torch", "numpy")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def content_hash(skeleton: bytes, slots: list[Slot] | tuple[Slot, ...], structure: Any = None) -> str:
    """Format 1's identity of a checkpoint's content: a canonical walk of the structure (containers with
    type, length and items; tensors by content hash and kind; other values by type and repr)."""
    from ckpt.format.skeleton import load_structure
    h = blake3.blake3(b"ckpt-content-v2\0")
    _canon(load_structure(skeleton, len(slots)) if structure is None else structure, h, slots)
    return h.hexdigest()


def _placeholder_paths(obj: Any, path: tuple, out: set) -> None:
    from ckpt.format.skeleton import TensorSlot
    if isinstance(obj, TensorSlot):
        out.add((path, obj.slot))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _placeholder_paths(v, path + (_key_form(k),), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _placeholder_paths(v, path + (i,), out)


def _key_form(k: Any) -> Any:
    return k if isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) else repr(k)


def _canon(obj: Any, h: Any, slots: list[Slot] | tuple[Slot, ...]) -> None:
    from ckpt.format.skeleton import TensorSlot
    if isinstance(obj, TensorSlot):
        s = slots[obj.slot]
        h.update(f"T{s.hash}:{s.kind};".encode())
    elif isinstance(obj, dict):
        h.update(f"D{type(obj).__name__}:{len(obj)};".encode())
        for k, v in obj.items():
            _canon(k, h, slots)
            _canon(v, h, slots)
        attrs = getattr(obj, "__dict__", None)
        if attrs:
            _canon(dict(sorted(attrs.items())), h, slots)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{type(obj).__name__}:{len(obj)};".encode())
        for v in obj:
            _canon(v, h, slots)
    elif isinstance(obj, (set, frozenset)):
        parts = []
        for v in obj:
            sub = blake3.blake3()
            _canon(v, sub, slots)
            parts.append(sub.digest())
        h.update(f"S{type(obj).__name__}:{len(obj)};".encode() + b"".join(sorted(parts)))
    else:
        try:
            text = repr(obj).encode("utf-8", "surrogatepass")
        except ValueError as exc:  # an int past sys.get_int_max_str_digits()
            raise CorruptCheckpointError(f"a value cannot be hashed in format 1 ({exc})") from exc
        h.update(f"V{type(obj).__module__}.{type(obj).__qualname__}:{len(text)};".encode() + text)


def _encode_float(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def encode_key(k: Any) -> Any:
    """JSON form of one key-path component; str and int stay themselves, anything else is described."""
    if isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)):
        return k
    return {"repr": repr(k)}


def _decode_key(k: Any) -> Any:
    if isinstance(k, (str, int)) and not isinstance(k, bool):
        return k
    if isinstance(k, dict) and set(k) == {"repr"} and isinstance(k["repr"], str):
        return k["repr"]
    raise CorruptCheckpointError(f"manifest has a malformed key component {k!r}")


def dumps(m: Manifest) -> bytes:
    """Format-1 bytes of ``m`` (ckpt writes format 2; tests and golden stores use this)."""
    body = {
        "ckpt_manifest": FORMAT, "id": m.id, "run": m.run, "epoch": m.epoch, "step": m.step,
        "created_at": m.created_at, "parent": m.parent,
        "metrics": {k: _encode_float(v) for k, v in m.metrics.items()},
        "skeleton": base64.b64encode(m.skeleton).decode("ascii"),
        "slots": [{"hash": s.hash, "dtype": s.dtype, "shape": list(s.shape), "nbytes": s.nbytes, "pack": s.pack,
                   "offset": s.offset, "length": s.length, "codec": s.codec, "check": s.check, "kind": s.kind}
                  for s in m.slots],
        "leaves": [[[encode_key(k) for k in path], slot] for path, slot in m.leaves],
        "content_hash": m.content_hash, "logical_size": m.logical_size, "new_bytes": m.new_bytes,
        "host": m.host, "pid": m.pid, "extra": m.extra,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    body["checksum"] = blake3.blake3(canonical).hexdigest()
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _need(cond: Any, what: str) -> None:
    if not cond:
        raise CorruptCheckpointError(f"manifest is malformed: {what}; run `ckpt verify`")


def _int(v: Any, what: str) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62, f"{what} must be an integer >= 0")
    return v


def loads(data: bytes, expected_id: str | None = None, *, structure: bool = True) -> Manifest:
    """Parse and validate a format-1 manifest; any deviation is a CorruptCheckpointError.

    With ``structure=False`` the skeleton is not unpickled (torch-free; the catalog's sync uses it): the
    checksum still covers every field."""
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=lambda c: c)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"manifest is not valid JSON ({str(exc)[:200]}); run `ckpt verify`") from exc
    _need(isinstance(body, dict), "top level is not an object")
    _need(body.get("ckpt_manifest") == FORMAT,
          f"unknown manifest format {str(body.get('ckpt_manifest'))[:20]} (this ckpt reads formats 1 and 2)")
    checksum = body.pop("checksum", None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    _need(isinstance(checksum, str) and blake3.blake3(canonical).hexdigest() == checksum,
          "checksum does not match its content (edited or damaged)")
    fields = check_header(body, expected_id)
    try:
        skeleton = base64.b64decode(body.get("skeleton", ""), validate=True)
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpointError("manifest skeleton is not valid base64") from exc
    raw_slots = body.get("slots")
    _need(isinstance(raw_slots, list), "slots is not a list")
    slots = []
    for i, s in enumerate(raw_slots):
        _need(isinstance(s, dict), f"slot {i} is not an object")
        _need(isinstance(s.get("hash"), str) and bool(_HEX64.match(s["hash"])), f"slot {i} hash")
        _need(isinstance(s.get("pack"), str) and bool(_HEX32.match(s["pack"])), f"slot {i} pack id")
        _need(isinstance(s.get("dtype"), str) and s["dtype"] in ITEMSIZE, f"slot {i} dtype")
        _need(s.get("codec") in CODECS, f"slot {i} codec {str(s.get('codec'))[:20]}")
        _need(isinstance(s.get("check"), str) and bool(_HEX32.match(s["check"])), f"slot {i} check")
        _need(s.get("kind", "torch") in KINDS, f"slot {i} kind")
        dims = s.get("shape")
        _need(isinstance(dims, list) and len(dims) <= 64 and
              all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in dims), f"slot {i} shape")
        _need(math.prod(dims) * ITEMSIZE[s["dtype"]] == s.get("nbytes"),
              f"slot {i}: shape {dims} of {s['dtype']} does not hold {str(s.get('nbytes'))[:30]} bytes")
        _need(s["codec"] != "raw" or s.get("length") == s.get("nbytes"), f"slot {i}: raw length != nbytes")
        slots.append(Slot(s["hash"], s["dtype"], tuple(dims), _int(s.get("nbytes"), f"slot {i} nbytes"), s["pack"],
                          _int(s.get("offset"), f"slot {i} offset"), _int(s.get("length"), f"slot {i} length"),
                          s["codec"], s["check"], s.get("kind", "torch")))
    raw_leaves = body.get("leaves")
    _need(isinstance(raw_leaves, list), "leaves is not a list")
    leaves = []
    for leaf in raw_leaves:
        _need(isinstance(leaf, list) and len(leaf) == 2 and isinstance(leaf[0], list), "malformed leaf")
        slot = leaf[1]
        _need(isinstance(slot, int) and not isinstance(slot, bool) and 0 <= slot < len(slots),
              "leaf refers to a slot that does not exist")
        leaves.append((tuple(_decode_key(k) for k in leaf[0]), slot))
    m = Manifest(skeleton=skeleton, table=SlotTable.build(slots), format=FORMAT, **fields)
    if structure:
        from ckpt.format.skeleton import load_structure
        tree = load_structure(m.skeleton, len(m.slots))
        _need(content_hash(m.skeleton, m.slots, tree) == m.content_hash, "content hash does not match its slots")
        expected: set = set()
        _placeholder_paths(tree, (), expected)
        _need(expected == {(tuple(_key_form(k) for k in p), slot) for p, slot in leaves},
              "leaves do not match the tensors of the skeleton")
        m.__dict__["_structure"] = tree
        m.__dict__["leaves"] = tuple(leaves)
    return m
