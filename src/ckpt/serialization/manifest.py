"""The manifest: one JSON document per checkpoint, the commit point on storage.

It names every tensor slot (hash, dtype, shape, where its bytes are) and carries the pickled skeleton,
so a checkpoint can be restored, verified, and re-indexed from storage alone. A checksum over the
body catches edits; ``parse`` validates every field before anything trusts it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import blake3

from ckpt.errors import CorruptCheckpointError
from ckpt.serialization.skeleton import TensorSlot, load_structure
from ckpt.serialization.tensors import dtype_from_name

FORMAT = 1
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
CODECS = ("raw", "zstd")
KINDS = ("torch", "numpy")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Slot:
    hash: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    pack: str
    offset: int
    length: int
    codec: str
    check: str  # xxh3-128 of the raw bytes: what every read verifies
    kind: str = "torch"

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
                "pack": self.pack, "offset": self.offset, "length": self.length, "codec": self.codec,
                "check": self.check, "kind": self.kind}


@dataclass(frozen=True)
class Manifest:
    id: str
    run: str
    epoch: int
    step: int | None
    created_at: str
    parent: str | None
    metrics: dict[str, float]
    skeleton: bytes
    slots: tuple[Slot, ...]
    leaves: tuple[tuple[tuple, int], ...]
    content_hash: str
    logical_size: int
    new_bytes: int
    host: str = ""
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def packs(self) -> set[str]:
        return {s.pack for s in self.slots}


def content_hash(skeleton: bytes, slots: list[Slot] | tuple[Slot, ...], structure: Any = None) -> str:
    """Identity of a checkpoint's content: equal states give equal hashes, whatever the codec, the pickle
    memo (shared vs equal objects) or the tensors' slot numbering.

    It hashes a canonical walk of the structure: containers with their type, length and items, tensors by
    content hash and kind, other values by type and repr.
    """
    h = blake3.blake3(b"ckpt-content-v2\0")
    _canon(load_structure(skeleton, len(slots)) if structure is None else structure, h, slots)
    return h.hexdigest()


def _placeholder_paths(obj: Any, path: tuple, out: set) -> None:
    if isinstance(obj, TensorSlot):
        out.add((path, obj.slot))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _placeholder_paths(v, path + (_key_form(k),), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _placeholder_paths(v, path + (i,), out)


def _key_form(k: Any) -> Any:
    """A key as the manifest's leaves spell it (str and int as they are, others by repr)."""
    return k if isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) else repr(k)


def _canon(obj: Any, h: Any, slots: list[Slot] | tuple[Slot, ...]) -> None:
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
        text = repr(obj).encode("utf-8", "surrogatepass")
        h.update(f"V{type(obj).__module__}.{type(obj).__qualname__}:{len(text)};".encode() + text)


def _encode_float(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def _decode_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise CorruptCheckpointError(f"manifest metric value {v!r} is not a number")
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise CorruptCheckpointError(f"manifest metric value {v!r} is not a number")
        return float(v)
    return float(v)


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
    body = {
        "ckpt_manifest": FORMAT,
        "id": m.id,
        "run": m.run,
        "epoch": m.epoch,
        "step": m.step,
        "created_at": m.created_at,
        "parent": m.parent,
        "metrics": {k: _encode_float(v) for k, v in m.metrics.items()},
        "skeleton": base64.b64encode(m.skeleton).decode("ascii"),
        "slots": [s.to_json() for s in m.slots],
        "leaves": [[[encode_key(k) for k in path], slot] for path, slot in m.leaves],
        "content_hash": m.content_hash,
        "logical_size": m.logical_size,
        "new_bytes": m.new_bytes,
        "host": m.host,
        "pid": m.pid,
        "extra": m.extra,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    body["checksum"] = blake3.blake3(canonical).hexdigest()
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise CorruptCheckpointError(f"manifest is malformed: {what}; run `ckpt verify`")


def _int(v: Any, what: str, *, allow_none: bool = False, minimum: int | None = 0) -> Any:
    if v is None and allow_none:
        return None
    _need(isinstance(v, int) and not isinstance(v, bool), f"{what} must be an integer")
    _need(minimum is None or v >= minimum, f"{what} must be >= {minimum}")
    return v


def loads(data: bytes, expected_id: str | None = None) -> Manifest:
    """Parse and validate a manifest; any deviation is a CorruptCheckpointError."""
    _need(len(data) <= MAX_MANIFEST_BYTES, "larger than the maximum manifest size")
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=lambda c: c)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"manifest is not valid JSON ({exc}); run `ckpt verify`") from exc
    _need(isinstance(body, dict), "top level is not an object")
    _need(body.get("ckpt_manifest") == FORMAT,
          f"unknown manifest format {body.get('ckpt_manifest')!r} (this ckpt reads format {FORMAT})")
    checksum = body.pop("checksum", None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    _need(isinstance(checksum, str) and blake3.blake3(canonical).hexdigest() == checksum,
          "checksum does not match its content (edited or damaged)")
    mid = body.get("id")
    _need(isinstance(mid, str) and bool(_HEX32.match(mid)), "bad id")
    if expected_id is not None:
        _need(mid == expected_id, f"manifest names checkpoint {mid}, expected {expected_id}")
    _need(isinstance(body.get("run"), str) and body["run"] != "", "bad run name")
    parent = body.get("parent")
    _need(parent is None or (isinstance(parent, str) and bool(_HEX32.match(parent))), "bad parent")
    metrics = body.get("metrics")
    _need(isinstance(metrics, dict), "metrics is not an object")
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
        _need(isinstance(s.get("dtype"), str) and len(s["dtype"]) < 32, f"slot {i} dtype")
        _need(s.get("codec") in CODECS, f"slot {i} codec {s.get('codec')!r}")
        _need(isinstance(s.get("check"), str) and bool(_HEX32.match(s["check"])), f"slot {i} check")
        _need(s.get("kind", "torch") in KINDS, f"slot {i} kind")
        shape = s.get("shape")
        _need(isinstance(shape, list) and len(shape) <= 64, f"slot {i} shape")
        dims = s.get("shape")
        _need(all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in dims),
              f"slot {i} shape")
        itemsize = dtype_from_name(s["dtype"]).itemsize
        _need(math.prod(dims) * itemsize == s.get("nbytes"), f"slot {i}: shape {dims} of {s['dtype']} does not "
              f"hold {s.get('nbytes')!r} bytes")
        _need(s["codec"] != "raw" or s.get("length") == s.get("nbytes"), f"slot {i}: raw length != nbytes")
        slots.append(Slot(hash=s["hash"], dtype=s["dtype"],
                          shape=tuple(_int(d, f"slot {i} shape") for d in shape),
                          nbytes=_int(s.get("nbytes"), f"slot {i} nbytes"), pack=s["pack"],
                          offset=_int(s.get("offset"), f"slot {i} offset"),
                          length=_int(s.get("length"), f"slot {i} length"),
                          codec=s["codec"], check=s["check"], kind=s.get("kind", "torch")))
    raw_leaves = body.get("leaves")
    _need(isinstance(raw_leaves, list), "leaves is not a list")
    leaves = []
    for leaf in raw_leaves:
        _need(isinstance(leaf, list) and len(leaf) == 2 and isinstance(leaf[0], list), "malformed leaf")
        slot = _int(leaf[1], "leaf slot")
        _need(slot < len(slots), "leaf refers to a slot that does not exist")
        leaves.append((tuple(_decode_key(k) for k in leaf[0]), slot))
    m = Manifest(
        id=mid, run=body["run"], epoch=_int(body.get("epoch"), "epoch", minimum=None),
        step=_int(body.get("step"), "step", allow_none=True, minimum=None),
        created_at=str(body.get("created_at", "")), parent=parent,
        metrics={str(k): _decode_float(v) for k, v in metrics.items()},
        skeleton=skeleton, slots=tuple(slots), leaves=tuple(leaves),
        content_hash=str(body.get("content_hash", "")),
        logical_size=_int(body.get("logical_size"), "logical_size"),
        new_bytes=_int(body.get("new_bytes"), "new_bytes"),
        host=str(body.get("host", "")), pid=_int(body.get("pid", 0), "pid"),
        extra=body.get("extra") if isinstance(body.get("extra"), dict) else {},
    )
    structure = load_structure(m.skeleton, len(m.slots))
    _need(content_hash(m.skeleton, m.slots, structure) == m.content_hash, "content hash does not match its slots")
    expected: set = set()
    _placeholder_paths(structure, (), expected)
    _need(expected == {(tuple(_key_form(k) for k in p), slot) for p, slot in m.leaves},
          "leaves do not match the tensors of the skeleton")
    return m


def path_for(checkpoint_id: str) -> str:
    return f"manifests/{checkpoint_id}.json"


def pack_path(pack_id: str) -> str:
    return f"packs/{pack_id}.safetensors"
