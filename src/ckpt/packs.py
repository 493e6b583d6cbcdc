"""Packs: the tensors one save adds to the store, one safetensors file streamed into a storage Sink.

Entries are named by tensor hash. Raw entries keep their dtype and shape, so a pack opens in any
safetensors reader; compressed entries are U8 byte strings (their real dtype and shape are in the
manifest). Tensor bytes go to the sink as they come, after a header region reserved for the worst
case; the header is filled in at commit (the sink keeps that region: a local file is patched in place,
an S3 upload holds its first part back). Reads go straight into the destination and are checked.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from ckpt.errors import CorruptCheckpointError, MissingBlobError, StorageError
from ckpt.format import codec
from ckpt.format.manifest import Slot, pack_path
from ckpt.format.pack_header import build_header
from ckpt.format.tensors import byte_view, checksum, dtype_from_name, empty_tensor, st_dtype, tensor_hash

PACK_METADATA = {"format": "ckpt-pack-1"}
MIN_COMPRESS = 4096


@dataclass(frozen=True)
class Location:
    offset: int
    length: int
    codec: str


_ENTRY_FIXED = len('"":{"dtype":"F8_E4M3FNUZ","shape":,"data_offsets":[,]},') + 64 + 2 * 20


@functools.lru_cache(maxsize=4096)  # per tensor of a save; a model has few distinct shapes
def entry_bound(shape: tuple[int, ...], nbytes: int) -> int:
    """Upper bound on one entry's JSON size in the header, whichever form it takes (the JSON of
    ``[d0, d1]`` is 2 brackets, the digits and ", " between)."""
    dims = 2 + sum(len(str(d)) for d in shape) + 2 * max(len(shape) - 1, 0)
    return _ENTRY_FIXED + max(dims, 2 + len(str(nbytes)))


@functools.lru_cache(maxsize=None)
def _st_code(dtype: str) -> tuple[str, bool]:
    """The safetensors dtype of a ckpt dtype name, and whether the entry keeps the tensor's shape (dtypes
    safetensors lacks are stored as flat U8)."""
    torch_dtype = dtype_from_name(dtype)
    code = st_dtype(torch_dtype)
    return code, code != "U8" or torch_dtype == torch.uint8


class PackWriter:
    """Writes one pack: entries in any number (``add``, or ``begin``/``write``/``end`` for streamed
    bytes), then ``finish`` publishes it create-only. Nothing is visible before."""

    def __init__(self, storage: Any, pack_id: str, candidates: list[tuple[tuple[int, ...], int]]) -> None:
        self.pack_id = pack_id
        self.key = pack_path(pack_id)
        meta = len(json.dumps({"__metadata__": PACK_METADATA})) + 2
        reserve = 8 + meta + sum(entry_bound(tuple(shape), n) for shape, n in candidates)
        self.reserve = reserve + (-reserve % 8)
        self._room = len(candidates)
        self.sink = storage.open_sink(self.key, reserve=self.reserve)
        self.entries: list[tuple[str, str, list[int], int]] = []
        self._names: dict[str, Location] = {}
        self._start = -1
        self._end = -1

    @property
    def position(self) -> int:
        return self.sink.position

    @property
    def empty(self) -> bool:
        return not self.entries

    def has_room(self) -> bool:
        return len(self.entries) < self._room

    def begin(self) -> int:
        self._start = self.sink.position
        return self._start

    def write(self, data: Any) -> None:
        self.sink.write(data)

    def end(self, name: str, dtype: str, shape: tuple[int, ...], codec_name: str) -> Location:
        return self.record(name, dtype, shape, self._start, self.sink.position - self._start, codec_name)

    def record(self, name: str, dtype: str, shape: tuple[int, ...], start: int, length: int,
               codec_name: str = "raw") -> Location:
        """Name ``length`` bytes already written at ``start`` (entries must come in file order).

        Returns where the tensor named ``name`` is: when a tensor with that hash was already written to
        this pack (a tensor changed mid-save into bytes another one has), the earlier copy; the bytes
        written again stay under an alias name, since a safetensors file must name every byte range."""
        if self.entries and start != self._end:  # the header gives offsets as running sums of lengths
            raise StorageError(f"internal error: pack entry for {name[:12]} at {start}, expected {self._end}; "
                               f"nothing was committed")
        self._end = start + length
        first = self._names.get(name)
        if first is not None:
            name = f"{name}~{len(self.entries)}"
        if codec_name == "zstd":
            entry = (name, "U8", [length], length)
        else:
            code, as_declared = _st_code(dtype)
            entry = (name, code, list(shape) if as_declared else [length], length)
        self.entries.append(entry)
        if first is not None:
            return first
        location = self._names[name] = Location(start, length, codec_name)
        return location

    def finish(self) -> int:
        """Write the header, make the pack durable and visible; returns its size (0 if nothing was added)."""
        if self.empty:
            self.abort()
            return 0
        prefix, _ = build_header(self.entries, PACK_METADATA, pad_to=self.reserve)
        return self.sink.commit(prefix)

    def abort(self) -> None:
        self.sink.abort()


def read_slot(reader: Any, slot: Slot, out: torch.Tensor | None = None, *, verify: bool | str = True) -> torch.Tensor:
    """Read one slot's bytes into ``out`` (allocated when None) and check them.

    ``verify=True`` checks the xxh3 checksum (fast); ``"full"`` also re-computes the blake3 content
    hash; ``False`` trusts the bytes. Lengths are bounded by the pack's real size before anything is
    allocated for them.
    """
    if slot.offset + slot.length > reader.size:
        raise MissingBlobError(f"pack {slot.pack} is truncated: tensor {slot.hash[:12]} needs bytes "
                               f"{slot.offset}..{slot.offset + slot.length} but it has {reader.size}; run "
                               f"`ckpt verify`")
    if out is None:
        out = empty_tensor(slot.dtype, slot.shape)
    view = byte_view(out)
    if len(view) != slot.nbytes:
        raise CorruptCheckpointError(
            f"tensor {slot.hash[:12]} should hold {slot.nbytes} bytes for dtype {slot.dtype} and shape "
            f"{list(slot.shape)}, which needs {len(view)}; the manifest is damaged")
    if slot.codec == "raw":
        if slot.length != slot.nbytes:
            raise CorruptCheckpointError(f"tensor {slot.hash[:12]}: stored length {slot.length} != {slot.nbytes}")
        reader.read_into(slot.offset, view)
    else:
        payload = reader.read(slot.offset, slot.length)
        codec.decode_into(payload, view, dtype_from_name(slot.dtype).itemsize)
    check_bytes(view, slot, verify)
    return out


def check_bytes(view: memoryview, slot: Slot, verify: bool | str) -> None:
    if verify and (checksum(view) != slot.check or
                   (verify == "full" and tensor_hash(slot.dtype, slot.shape, view) != slot.hash)):
        raise CorruptCheckpointError(
            f"tensor {slot.hash[:12]} in pack {slot.pack} does not match its checksum (bit rot, truncation "
            f"or tampering); run `ckpt verify --full`. Load an earlier checkpoint (e.g. `latest~1`).")
