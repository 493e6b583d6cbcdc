"""Packs: the tensors one save adds to the store, as one safetensors file named by a random id.

Each entry is named by its tensor hash. Raw entries keep their dtype and shape, so a pack opens in any
safetensors reader; compressed entries are U8 byte strings (their real dtype and shape are in the
manifest). Reads go straight into the destination tensor and are checked against the hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ckpt.blobs import Reader
from ckpt.errors import CorruptCheckpointError
from ckpt.serialization import codec
from ckpt.serialization.manifest import Slot
from ckpt.serialization.safetensors_header import build_header
from ckpt.serialization.tensors import (byte_view, dtype_from_name, empty_tensor, st_dtype,
                                        tensor_hash)

PACK_METADATA = {"format": "ckpt-pack-1"}


@dataclass
class NewTensor:
    hash: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview  # the raw (uncompressed) bytes, kept alive by the caller's tensor


@dataclass(frozen=True)
class Location:
    offset: int
    length: int
    codec: str


def build(items: Sequence[NewTensor], compress: bool) -> tuple[list[memoryview | bytes], dict[str, Location], int]:
    """Lay out a pack: returns the chunks to write in order, where each tensor lands, and the total size."""
    payloads: list[memoryview | bytes] = []
    entries = []
    codecs = []
    for t in items:
        torch_dtype = dtype_from_name(t.dtype)
        encoded = None
        if compress and len(t.data) >= 4096:
            encoded = codec.encode(t.data, torch_dtype.itemsize)
        if encoded is not None:
            payloads.append(encoded)
            entries.append((t.hash, "U8", [len(encoded)], len(encoded)))
            codecs.append("zstd")
        else:
            payloads.append(t.data)
            code = st_dtype(torch_dtype)
            shape = list(t.shape) if code != "U8" or torch_dtype == torch.uint8 else [len(t.data)]
            entries.append((t.hash, code, shape, len(t.data)))
            codecs.append("raw")
    prefix, offsets = build_header(entries, PACK_METADATA)
    locations = {t.hash: Location(begin, end - begin, c)
                 for t, (begin, end), c in zip(items, offsets, codecs)}
    size = len(prefix) + sum(len(p) for p in payloads)
    return [prefix, *payloads], locations, size


def read_slot(reader: Reader, slot: Slot, out: torch.Tensor | None = None, *, verify: bool = True) -> torch.Tensor:
    """Read one slot's bytes into ``out`` (allocated when None) and check them against the slot's hash."""
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
    if verify and tensor_hash(slot.dtype, slot.shape, view) != slot.hash:
        raise CorruptCheckpointError(
            f"tensor {slot.hash[:12]} in pack {slot.pack} does not match its hash (bit rot, truncation or "
            f"tampering); run `ckpt verify --full`. Load an earlier checkpoint (e.g. `latest~1`).")
    return out
