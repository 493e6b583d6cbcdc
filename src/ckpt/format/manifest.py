"""Manifests: one per checkpoint, the commit point on storage. Format 2 is written; format 1 is read.

Format 2 is a small JSON header (identity, metrics, lineage, packs, counts, checksums) followed by a
columnar slot table (a NumPy structured array, validated vectorised: 10,000 slots in about a
millisecond), the dims of every shape, and the skeleton pickle. Key paths are not stored: they are
the skeleton's placeholders, so the skeleton is unpickled once, when a caller first needs the
structure (``Manifest.structure()``). Nothing here imports torch; decoding the skeleton does.

File layout (integers little-endian)::

    0   8   magic b"CKPTMF2\\n"
    8   8   u64 header length H (a multiple of 8: the JSON is padded with spaces)
    16  H   header JSON, UTF-8
    ..  8*D dims: int64, the shapes of all slots back to back
    ..  84*N slot table (SLOT_DTYPE)
    ..  S   skeleton (pickle protocol 5, restricted on load)

``checksum`` (in the header) is blake3 over the canonical header without it, then every byte after
the header; ``content_hash`` is blake3 over the skeleton and each slot's tensor hash and kind.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple, Sequence

import blake3

from ckpt.errors import CorruptCheckpointError
from ckpt.format.dtypes import ITEMSIZE

FORMAT = 2
MAGIC = b"CKPTMF2\n"
SUFFIX = ".ckpt"
SUFFIX_V1 = ".json"
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024 * 1024
CODECS = ("raw", "zstd")
KINDS = ("torch", "numpy")
#: One integer range for epochs, steps and sizes, the same on every index backend (BIGINT).
INT_LIMIT = 2**62
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = struct.Struct("<8sQ")
_CONTENT_DOMAIN = b"ckpt-content-v3\0"

SLOT_FIELDS = [
    ("hash", "V32"), ("check", "V16"), ("offset", "<u8"), ("length", "<u8"), ("nbytes", "<u8"),
    ("pack", "<u4"), ("dims_at", "<u4"), ("dtype", "u1"), ("codec", "u1"), ("kind", "u1"), ("ndim", "u1"),
]
SLOT_SIZE = 84


def _np():  # type: ignore[no-untyped-def]
    """NumPy, imported on first use: listing checkpoints never needs it (the CLI starts faster)."""
    import numpy
    return numpy


def slot_dtype():  # type: ignore[no-untyped-def]
    global _SLOT_DTYPE
    if _SLOT_DTYPE is None:
        _SLOT_DTYPE = _np().dtype(SLOT_FIELDS)
        assert _SLOT_DTYPE.itemsize == SLOT_SIZE
    return _SLOT_DTYPE


_SLOT_DTYPE = None


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name == "SLOT_DTYPE":
        return slot_dtype()
    raise AttributeError(name)


class Slot(NamedTuple):
    """One stored tensor: its identity (hash, dtype, shape), where its bytes are, and their checksum."""

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


def _need(cond: Any, what: str) -> None:
    if not cond:
        raise CorruptCheckpointError(f"manifest is malformed: {what}; run `ckpt verify`")


@dataclass(frozen=True, eq=False)
class SlotTable:
    """Every slot of a manifest as columns; ``slots`` builds the row objects on first use."""

    rows: Any  # np.ndarray of SLOT_DTYPE
    dims: Any  # np.ndarray, int64: the shapes back to back
    packs: tuple[str, ...]
    dtypes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def hashes(self) -> list[str]:
        return _hex_column(self.rows["hash"], 32)

    @cached_property
    def checks(self) -> list[str]:
        return _hex_column(self.rows["check"], 16)

    @cached_property
    def shapes(self) -> list[tuple[int, ...]]:
        dims = self.dims.tolist()
        return [tuple(dims[a:a + n]) for a, n in zip(self.rows["dims_at"].tolist(), self.rows["ndim"].tolist())]

    @cached_property
    def slots(self) -> tuple[Slot, ...]:
        r = self.rows
        packs, dtypes = self.packs, self.dtypes
        return tuple(Slot(h, dtypes[d], s, n, packs[p], o, ln, CODECS[c], ck, KINDS[k])
                     for h, d, s, n, p, o, ln, c, ck, k in zip(
                         self.hashes, r["dtype"].tolist(), self.shapes, r["nbytes"].tolist(), r["pack"].tolist(),
                         r["offset"].tolist(), r["length"].tolist(), r["codec"].tolist(), self.checks,
                         r["kind"].tolist()))

    @classmethod
    def build(cls, slots: Sequence[Slot]) -> "SlotTable":
        """A table from row objects (the save path and format-1 manifests)."""
        np = _np()
        n = len(slots)
        packs: dict[str, int] = {}
        dtypes: dict[str, int] = {}
        rows = np.zeros(n, dtype=slot_dtype())
        if n:
            rows["hash"] = np.frombuffer(bytes.fromhex("".join(s.hash for s in slots)), dtype="V32")
            rows["check"] = np.frombuffer(bytes.fromhex("".join(s.check for s in slots)), dtype="V16")
            rows["offset"] = [s.offset for s in slots]
            rows["length"] = [s.length for s in slots]
            rows["nbytes"] = [s.nbytes for s in slots]
            rows["pack"] = [packs.setdefault(s.pack, len(packs)) for s in slots]
            rows["dtype"] = [dtypes.setdefault(s.dtype, len(dtypes)) for s in slots]
            rows["codec"] = [CODECS.index(s.codec) for s in slots]
            rows["kind"] = [KINDS.index(s.kind) for s in slots]
            ndim = [len(s.shape) for s in slots]
            rows["ndim"] = ndim
            rows["dims_at"] = np.concatenate(([0], np.cumsum(ndim, dtype=np.int64)[:-1]))
        dims = np.fromiter((d for s in slots for d in s.shape), dtype=np.int64)
        table = cls(rows, dims, tuple(packs), tuple(dtypes))
        table.__dict__["slots"] = tuple(slots)
        return table

    def validate(self, pack_sizes: dict[str, int] | None = None) -> None:
        """Every column in range, every shape holding exactly ``nbytes``, every range inside its pack."""
        np = _np()
        r, n = self.rows, len(self.rows)
        for name in self.dtypes:
            _need(name in ITEMSIZE, f"unknown tensor dtype {name!r}")
        for p in self.packs:
            _need(isinstance(p, str) and _HEX32.match(p), "bad pack id")
        if not n:
            _need(len(self.dims) == 0, "dims without slots")
            return
        _need((r["dtype"] < len(self.dtypes)).all(), "slot dtype index out of range")
        _need((r["codec"] < len(CODECS)).all(), "slot codec out of range")
        _need((r["kind"] < len(KINDS)).all(), "slot kind out of range")
        _need((r["pack"] < len(self.packs)).all(), "slot pack index out of range")
        ndim = r["ndim"].astype(np.int64)
        _need((ndim <= 64).all(), "a shape has more than 64 dimensions")
        starts = np.concatenate(([0], np.cumsum(ndim)[:-1]))
        _need(int(ndim.sum()) == len(self.dims) and (r["dims_at"] == starts).all(), "dims table does not match")
        _need(((self.dims >= 0) & (self.dims < INT_LIMIT)).all(), "a dimension is out of range")
        itemsize = np.array([ITEMSIZE[d] for d in self.dtypes], dtype=np.int64)[r["dtype"]]
        numel = np.ones(n, dtype=np.int64)
        nz = ndim > 0
        if nz.any():
            bounds = np.multiply.reduceat(self.dims.astype(np.float64), starts[nz])
            _need((bounds * itemsize[nz] < INT_LIMIT).all(), "a shape is too large")
            numel[nz] = np.multiply.reduceat(self.dims, starts[nz])
        nbytes = r["nbytes"].astype(np.int64) if (r["nbytes"] < INT_LIMIT).all() else None
        _need(nbytes is not None and (numel * itemsize == nbytes).all(), "a slot's shape and dtype do not hold nbytes")
        offset, length = r["offset"], r["length"]
        _need(((offset < INT_LIMIT) & (length < INT_LIMIT)).all(), "a byte range is out of range")
        raw = r["codec"] == 0
        _need((length[raw] == r["nbytes"][raw]).all(), "a raw slot's length differs from its size")
        if pack_sizes:
            size = np.array([pack_sizes.get(p, INT_LIMIT) or INT_LIMIT for p in self.packs], dtype=np.int64)
            _need(((offset + length).astype(np.int64) <= size[r["pack"]]).all(), "a slot lies outside its pack")

    def content_hash(self, skeleton: bytes) -> str:
        h = blake3.blake3(_CONTENT_DOMAIN)
        h.update(struct.pack("<Q", len(skeleton)))
        h.update(skeleton)
        h.update(self.rows["hash"].tobytes())
        h.update(self.rows["kind"].tobytes())
        return h.hexdigest()


def _hex_column(column: Any, width: int) -> list[str]:
    text = binascii.hexlify(column.tobytes()).decode("ascii")
    step = 2 * width
    return [text[i:i + step] for i in range(0, len(text), step)]


@dataclass(frozen=True, eq=False)
class Manifest:
    id: str
    run: str
    epoch: int
    step: int | None
    created_at: str
    parent: str | None
    metrics: dict[str, float]
    skeleton: bytes
    table: SlotTable
    content_hash: str
    logical_size: int
    new_bytes: int
    host: str = ""
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    format: int = FORMAT
    pack_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def slots(self) -> tuple[Slot, ...]:
        return self.table.slots

    @property
    def packs(self) -> set[str]:
        return set(self.table.packs)

    @property
    def key(self) -> str:
        return path_for(self.id, self.format)

    def structure(self) -> Any:
        """The skeleton unpickled (once) through the allowlist; tensors are TensorSlot placeholders.

        Callers must not mutate it: ``reader.fill`` builds new containers."""
        cached = self.__dict__.get("_structure")
        if cached is None:
            from ckpt.format.skeleton import load_structure
            cached = load_structure(self.skeleton, len(self.table))
            self._remember_leaves(cached)
            self.__dict__["_structure"] = cached
        return cached

    def plain_structure(self) -> Any:
        """The skeleton read without torch (torch.Size as a tuple, dtypes and devices as strings): what
        the CLI's read commands and the web view need, at a fraction of the cost of importing torch."""
        cached = self.__dict__.get("_structure") or self.__dict__.get("_plain")
        if cached is None:
            from ckpt.format.unpickle import load_structure
            cached = load_structure(self.skeleton, len(self.table), plain=True)
            self._remember_leaves(cached)
            self.__dict__["_plain"] = cached
        return cached

    def check_structure(self) -> None:
        """Validate the skeleton (allowlist, shape, placeholders) once: with torch when it is loaded
        anyway (the structure is then reused by the load), else without."""
        import sys
        if "torch" in sys.modules:
            self.structure()
        else:
            self.plain_structure()

    def _remember_leaves(self, structure: Any) -> None:
        if "leaves" in self.__dict__:
            return
        leaves = _leaves(structure)
        _need({slot for _, slot in leaves} == set(range(len(self.table))),
              "the skeleton's tensors do not match the slot table")
        self.__dict__["leaves"] = leaves

    @cached_property
    def leaves(self) -> tuple[tuple[tuple, int], ...]:
        """(key path, slot) for every tensor leaf, in traversal order; two paths with one slot are tied."""
        self.plain_structure()
        return self.__dict__["leaves"]

    def header(self) -> dict[str, Any]:
        return {
            "ckpt_manifest": self.format, "id": self.id, "run": self.run, "epoch": self.epoch,
            "step": self.step, "variant": self.variant, "created_at": self.created_at, "parent": self.parent,
            "metrics": {k: _encode_float(v) for k, v in self.metrics.items()},
            "packs": [[p, int(self.pack_sizes.get(p, 0))] for p in self.table.packs],
            "dtypes": list(self.table.dtypes), "slots": len(self.table), "dims": len(self.table.dims),
            "skeleton": len(self.skeleton), "content_hash": self.content_hash,
            "logical_size": self.logical_size, "new_bytes": self.new_bytes, "host": self.host, "pid": self.pid,
            "extra": self.extra,
        }


def _key_form(k: Any) -> Any:
    """A key as a leaf path spells it (str and int as they are, others by repr)."""
    return k if isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) else repr(k)


def _leaves(structure: Any) -> tuple[tuple[tuple, int], ...]:
    from ckpt.format.unpickle import TensorSlot
    out: list[tuple[tuple, int]] = []

    def walk(obj: Any, path: tuple) -> None:
        if isinstance(obj, TensorSlot):
            out.append((path, obj.slot))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, path + (_key_form(k),))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, path + (i,))

    walk(structure, ())
    return tuple(out)


def _encode_float(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def decode_metric(name: Any, v: Any) -> float:
    _need(isinstance(name, str) and 0 < len(name) <= 256, "bad metric name")
    if isinstance(v, str):
        _need(v in ("nan", "inf", "-inf"), f"metric value {v!r} is not a number")
        return float(v)
    _need(not isinstance(v, bool) and isinstance(v, (int, float)), f"metric value {v!r} is not a number")
    try:
        return float(v)
    except OverflowError:
        raise CorruptCheckpointError(f"manifest is malformed: metric {name!r} is out of range") from None


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def encode(m: Manifest) -> bytes:
    """The format-2 bytes of ``m``."""
    header = m.header()
    t = m.table
    body = [t.dims.astype("<i8").tobytes(), t.rows.tobytes(), m.skeleton]
    h = blake3.blake3(_canonical(header))
    for part in body:
        h.update(part)
    header["checksum"] = h.hexdigest()
    text = _canonical(header)
    text += b" " * (-len(text) % 8)
    return b"".join([_PREFIX.pack(MAGIC, len(text)), text, *body])


def _int(v: Any, what: str, *, allow_none: bool = False, minimum: int = 0) -> Any:
    if v is None and allow_none:
        return None
    _need(isinstance(v, int) and not isinstance(v, bool) and minimum <= v < INT_LIMIT,
          f"{what} must be an integer in [{minimum}, 2**62)")
    return v


def _text(v: Any, what: str, limit: int, *, empty: bool = False) -> str:
    _need(isinstance(v, str) and (empty or v) and len(v) <= limit, f"bad {what}")
    return v


def check_header(body: dict[str, Any], expected_id: str | None = None) -> dict[str, Any]:
    """Validate the identity fields every format shares; returns them normalised."""
    mid = body.get("id")
    _need(isinstance(mid, str) and _HEX32.match(mid), "bad id")
    if expected_id is not None:
        _need(mid == expected_id, f"manifest names checkpoint {mid}, expected {expected_id}")
    parent = body.get("parent")
    _need(parent is None or (isinstance(parent, str) and _HEX32.match(parent)), "bad parent")
    _need(parent != mid, "a checkpoint cannot be its own parent")
    created = body.get("created_at")
    _need(isinstance(created, str) and len(created) <= 64, "bad created_at")
    try:
        stamp = datetime.fromisoformat(created)
    except ValueError:
        raise CorruptCheckpointError(f"manifest is malformed: created_at {created[:64]!r} is not an ISO 8601 "
                                     f"time; run `ckpt verify`") from None
    _need(stamp.tzinfo is not None, "created_at has no time zone")
    metrics = body.get("metrics")
    _need(isinstance(metrics, dict), "metrics is not an object")
    extra = body.get("extra", {})
    return {
        "id": mid, "run": _text(body.get("run"), "run name", 512), "epoch": _int(body.get("epoch"), "epoch"),
        "step": _int(body.get("step"), "step", allow_none=True), "created_at": created, "parent": parent,
        "metrics": {k: decode_metric(k, v) for k, v in metrics.items()},
        "content_hash": _text(body.get("content_hash", ""), "content hash", 64, empty=True),
        "logical_size": _int(body.get("logical_size"), "logical_size"),
        "new_bytes": _int(body.get("new_bytes"), "new_bytes"),
        "host": _text(body.get("host", ""), "host", 256, empty=True), "pid": _int(body.get("pid", 0), "pid"),
        "extra": extra if isinstance(extra, dict) else {},
        "variant": _text(body.get("variant", "") or "", "variant", 64, empty=True),
    }


def _json(data: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=lambda c: c)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also ints > 4300 digits
        raise CorruptCheckpointError(f"{what} is not valid JSON ({str(exc)[:200]}); run `ckpt verify`") from exc


def decode(data: bytes, expected_id: str | None = None) -> Manifest:
    """Parse and validate a manifest of either format; any deviation is a CorruptCheckpointError."""
    _need(len(data) <= MAX_MANIFEST_BYTES, "larger than the maximum manifest size")
    if not data.startswith(MAGIC):
        from ckpt.format import manifest_v1
        return manifest_v1.loads(data, expected_id=expected_id)
    _need(len(data) >= _PREFIX.size, "truncated")
    _, hlen = _PREFIX.unpack_from(data)
    _need(hlen <= MAX_HEADER_BYTES and _PREFIX.size + hlen <= len(data), "header length out of range")
    head = _json(memoryview(data)[_PREFIX.size:_PREFIX.size + hlen], "manifest header")
    _need(isinstance(head, dict), "header is not an object")
    _need(head.get("ckpt_manifest") == FORMAT, f"unknown manifest format {str(head.get('ckpt_manifest'))[:20]}")
    checksum = head.pop("checksum", None)
    body = memoryview(data)[_PREFIX.size + hlen:]
    h = blake3.blake3(_canonical(head))
    h.update(body)
    _need(isinstance(checksum, str) and h.hexdigest() == checksum, "checksum does not match its content "
          "(edited or damaged)")
    fields = check_header(head, expected_id)
    n, ndims, nskel = (_int(head.get(k), k) for k in ("slots", "dims", "skeleton"))
    _need(8 * ndims + SLOT_SIZE * n + nskel == len(body), "section sizes do not add up")
    packs_raw = head.get("packs")
    _need(isinstance(packs_raw, list) and all(isinstance(p, list) and len(p) == 2 for p in packs_raw), "bad packs")
    packs = tuple(_text(p, "pack id", 32) for p, _ in packs_raw)
    sizes = {p: _int(s, "pack size") for p, s in packs_raw}
    dtypes = head.get("dtypes")
    _need(isinstance(dtypes, list) and all(isinstance(d, str) for d in dtypes) and len(dtypes) <= 256, "bad dtypes")
    np = _np()
    dims = np.frombuffer(body, dtype="<i8", count=ndims)
    rows = np.frombuffer(body, dtype=slot_dtype(), count=n, offset=8 * ndims)
    skeleton = bytes(body[8 * ndims + SLOT_SIZE * n:])
    table = SlotTable(rows, dims, packs, tuple(dtypes))
    table.validate(sizes)
    _need(table.content_hash(skeleton) == fields["content_hash"], "content hash does not match its slots")
    return Manifest(skeleton=skeleton, table=table, format=FORMAT, pack_sizes=sizes, **fields)


def path_for(checkpoint_id: str, fmt: int = FORMAT) -> str:
    return f"manifests/{checkpoint_id}{SUFFIX if fmt >= 2 else SUFFIX_V1}"


def id_of(name: str) -> tuple[str, int] | None:
    """(checkpoint id, format) of a file name in manifests/, or None for anything else (temp files)."""
    if name.startswith("."):
        return None
    for suffix, fmt in ((SUFFIX, 2), (SUFFIX_V1, 1)):
        if name.endswith(suffix) and _HEX32.match(name[:-len(suffix)]):
            return name[:-len(suffix)], fmt
    return None


def pack_path(pack_id: str) -> str:
    return f"packs/{pack_id}.safetensors"
