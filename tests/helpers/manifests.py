"""Edit format-2 manifests the way anyone who can write the store could (the checksum is not a signature).

    doc = read(loc, cid)          # header dict, dims, slot rows (NumPy, writable copies), skeleton bytes
    doc.header["epoch"] = 7
    write(loc, cid, doc)          # re-signed (checksum) and re-hashed (content hash) unless told not to
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import blake3
import numpy as np

from ckpt.format import manifest as mf


@dataclass
class Doc:
    header: dict
    dims: np.ndarray
    rows: np.ndarray
    skeleton: bytes

    def shapes(self) -> list[list[int]]:
        dims = self.dims.tolist()
        return [dims[a:a + n] for a, n in zip(self.rows["dims_at"].tolist(), self.rows["ndim"].tolist())]

    def set_shapes(self, shapes: list[list[int]]) -> None:
        """Replace every slot's shape (rebuilding the dims table and each slot's dims offset)."""
        self.rows["ndim"] = [len(s) for s in shapes]
        self.rows["dims_at"] = np.concatenate(([0], np.cumsum([len(s) for s in shapes])[:-1])) if shapes else []
        self.dims = np.array([d for s in shapes for d in s], dtype=np.int64)


def parse(data: bytes) -> Doc:
    assert data.startswith(mf.MAGIC), "not a format-2 manifest"
    (hlen,) = struct.unpack_from("<Q", data, 8)
    header = json.loads(data[16:16 + hlen])
    body = data[16 + hlen:]
    nd, n = header["dims"], header["slots"]
    dims = np.frombuffer(body, dtype="<i8", count=nd).copy()
    rows = np.frombuffer(body, dtype=mf.SLOT_DTYPE, count=n, offset=8 * nd).copy()
    return Doc(header, dims, rows, bytes(body[8 * nd + mf.SLOT_DTYPE.itemsize * n:]))


def build(doc: Doc, *, resign: bool = True, rehash: bool = True) -> bytes:
    header = {k: v for k, v in doc.header.items() if k != "checksum"}
    header["slots"], header["dims"], header["skeleton"] = len(doc.rows), len(doc.dims), len(doc.skeleton)
    if rehash:
        h = blake3.blake3(b"ckpt-content-v3\0")
        h.update(struct.pack("<Q", len(doc.skeleton)))
        h.update(doc.skeleton)
        h.update(doc.rows["hash"].tobytes())
        h.update(doc.rows["kind"].tobytes())
        header["content_hash"] = h.hexdigest()
    body = doc.dims.astype("<i8").tobytes() + doc.rows.tobytes() + doc.skeleton
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if resign:
        header["checksum"] = blake3.blake3(canonical + body).hexdigest()
    elif "checksum" in doc.header:
        header["checksum"] = doc.header["checksum"]
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return mf.MAGIC + struct.pack("<Q", len(text)) + text + body


def path(loc: str, cid: str) -> str:
    return os.path.join(loc, "manifests", f"{cid}.ckpt")


def read(loc: str, cid: str) -> Doc:
    with open(path(loc, cid), "rb") as f:
        return parse(f.read())


def write(loc: str, cid: str, doc: Doc, **kw: bool) -> None:
    p = path(loc, cid)
    if os.path.exists(p):
        os.chmod(p, 0o644)
    with open(p, "wb") as f:
        f.write(build(doc, **kw))
