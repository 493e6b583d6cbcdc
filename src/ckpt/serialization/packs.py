"""Packs: the tensors one save adds to the store, as one safetensors file named by a random id.

Each entry is named by its tensor hash. Raw entries keep their dtype and shape, so a pack opens in any
safetensors reader; compressed entries are U8 byte strings (their real dtype and shape are in the
manifest). The writer streams: tensor bytes go to disk as soon as their hash says they are new, into
a region after a header reserved for the worst case; the header is written last, padded with spaces.
Nothing is buffered but the tensor being compressed. Reads go straight into the destination tensor and
are checked against the slot's checksum (or, with ``full``, its content hash).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ckpt.blobs import BlobStore, Reader
from ckpt.blobs import local
from ckpt.errors import CorruptCheckpointError, StorageError
from ckpt.serialization import codec
from ckpt.serialization.manifest import Slot, pack_path
from ckpt.serialization.safetensors_header import build_header
from ckpt.serialization.tensors import (byte_view, checksum, dtype_from_name, empty_tensor, st_dtype,
                                        tensor_hash)

PACK_METADATA = {"format": "ckpt-pack-1"}
_MIN_COMPRESS = 4096
_SPOOL_CHUNK = 8 << 20


@dataclass(frozen=True)
class Location:
    offset: int
    length: int
    codec: str


def _entry_bound(shape: tuple[int, ...], nbytes: int) -> int:
    """Upper bound on one entry's JSON size in the header, whichever form it takes."""
    dims = max(len(json.dumps(list(shape))), len(json.dumps([nbytes])))
    return len('"":{"dtype":"F8_E4M3FNUZ","shape":,"data_offsets":[,]},') + 64 + dims + 2 * 20


class PackWriter:
    """Writes one pack: ``add`` new tensors in any number, then ``finish`` publishes it atomically."""

    def __init__(self, blobs: BlobStore, pack_id: str, candidates: list[tuple[tuple[int, ...], int]],
                 compress: bool) -> None:
        self.blobs, self.pack_id, self.compress = blobs, pack_id, compress
        self.rel = pack_path(pack_id)
        meta = len(json.dumps({"__metadata__": PACK_METADATA})) + 2
        reserve = 8 + meta + sum(_entry_bound(shape, n) for shape, n in candidates)
        self.reserve = reserve + (-reserve % 8)
        self.pos = self.reserve
        self.entries: list[tuple[str, str, list[int], int]] = []
        self.codecs: list[str] = []
        if blobs.is_local:
            self.final = blobs.path(self.rel)
            os.makedirs(os.path.dirname(self.final), exist_ok=True)
            self.tmp = local.temp_name(self.final)
        else:  # object stores cannot seek back: spool locally, upload whole when finished
            fd, self.tmp = tempfile.mkstemp(prefix="ckpt-pack-", suffix=".spool")
            os.close(fd)
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | (0 if not blobs.is_local else os.O_EXCL), 0o644)
        except OSError as exc:
            raise StorageError(local._explain(exc, self.tmp)) from exc

    def _pwrite(self, data: memoryview | bytes | bytearray, at: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self.fd, view[done:done + (1 << 30)], at + done)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                done += n
        except OSError as exc:
            raise StorageError(local._explain(exc, self.rel)) from exc

    def add(self, hash_: str, dtype: str, shape: tuple[int, ...], data: memoryview) -> Location:
        torch_dtype = dtype_from_name(dtype)
        encoded = codec.encode(data, torch_dtype.itemsize) if self.compress and len(data) >= _MIN_COMPRESS else None
        if encoded is not None:
            payload, entry, name = encoded, (hash_, "U8", [len(encoded)], len(encoded)), "zstd"
        else:
            code = st_dtype(torch_dtype)
            dims = list(shape) if code != "U8" or torch_dtype == torch.uint8 else [len(data)]
            payload, entry, name = data, (hash_, code, dims, len(data)), "raw"
        self._pwrite(payload, self.pos)
        loc = Location(self.pos, len(payload), name)
        self.pos += len(payload)
        self.entries.append(entry)
        self.codecs.append(name)
        return loc

    @property
    def empty(self) -> bool:
        return not self.entries

    def finish(self) -> int:
        """Write the header, make the pack durable and visible; returns its size (0 if nothing was added)."""
        if self.empty:
            self.abort()
            return 0
        prefix, _ = build_header(self.entries, PACK_METADATA, pad_to=self.reserve)
        self._pwrite(prefix, 0)
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise StorageError(local._explain(exc, self.rel)) from exc
        finally:
            os.close(self.fd)
            self.fd = -1
        try:
            if self.blobs.is_local:
                os.replace(self.tmp, self.final)
                local.fsync_dir(os.path.dirname(self.final))
            else:
                self.blobs.write(self.rel, _chunks(self.tmp))
        except OSError as exc:
            raise StorageError(local._explain(exc, self.rel)) from exc
        finally:
            if not self.blobs.is_local:
                _unlink(self.tmp)
        return self.pos

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _unlink(self.tmp)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_SPOOL_CHUNK):
            yield chunk


def read_slot(reader: Reader, slot: Slot, out: torch.Tensor | None = None, *, verify: bool | str = True) -> torch.Tensor:
    """Read one slot's bytes into ``out`` (allocated when None) and check them.

    ``verify=True`` checks the xxh3 checksum (fast); ``"full"`` also re-computes the blake3 content
    hash; ``False`` trusts the bytes.
    """
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
    if verify and (checksum(view) != slot.check or
                   (verify == "full" and tensor_hash(slot.dtype, slot.shape, view) != slot.hash)):
        raise CorruptCheckpointError(
            f"tensor {slot.hash[:12]} in pack {slot.pack} does not match its checksum (bit rot, truncation "
            f"or tampering); run `ckpt verify --full`. Load an earlier checkpoint (e.g. `latest~1`).")
    return out
