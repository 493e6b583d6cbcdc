"""fsspec-backed blob storage with one contract for local disk, memory:// and object stores.

Keys passed in are relative paths that ckpt builds from digests and ids, never from user strings.
"""

from __future__ import annotations

import os
import posixpath
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ckpt.blobs import local
from ckpt.errors import MissingBlobError, StorageError

OBJECT_STORE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    mtime: float | None


class Reader:
    """Reads byte ranges of one blob straight into caller-provided buffers."""

    def __init__(self, store: "BlobStore", rel: str) -> None:
        self._rel = rel
        self._local_fd: int | None = None
        self._file = None
        path = store.path(rel)
        try:
            if store.is_local:
                self._local_fd = os.open(path, os.O_RDONLY)
                self.size = os.fstat(self._local_fd).st_size
            else:
                self._file = store.fs.open(path, "rb", block_size=0 if store.protocol != "memory" else None)
                self.size = store.fs.size(path)
        except FileNotFoundError as exc:
            raise MissingBlobError(f"blob {rel} is missing from the store; run `ckpt verify` to see what "
                                   f"is affected") from exc

    def read_into(self, offset: int, out: memoryview) -> None:
        out = out.cast("B") if out.format != "B" else out
        if offset < 0 or offset + len(out) > self.size:
            raise MissingBlobError(f"blob {self._rel} is truncated: need bytes {offset}..{offset + len(out)}"
                                   f" but it has {self.size}; run `ckpt verify`")
        done = 0
        while done < len(out):
            if self._local_fd is not None:
                n = os.preadv(self._local_fd, [out[done:]], offset + done)
            else:
                self._file.seek(offset + done)
                n = self._file.readinto(out[done:])
            if not n:
                raise MissingBlobError(f"blob {self._rel} ended early at byte {offset + done}")
            done += n

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def close(self) -> None:
        if self._local_fd is not None:
            os.close(self._local_fd)
            self._local_fd = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobStore:
    """One root on one fsspec filesystem, with atomic (or create-only) writes."""

    def __init__(self, location: str, storage_options: dict | None = None) -> None:
        fs, root = fsspec.core.url_to_fs(location, **(storage_options or {}))
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = proto
        self.is_local = isinstance(fs, LocalFileSystem)
        self.is_object_store = proto in OBJECT_STORE_PROTOCOLS
        self.url = self.root if self.is_local else f"{proto}://{self.root.lstrip('/')}"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        if self.is_local:
            return os.path.join(self.root, *rel.split("/"))
        return posixpath.join(self.root, rel)

    # -- writes --------------------------------------------------------------------------------
    def write(self, rel: str, chunks: Iterable[bytes | memoryview], *, exclusive: bool = False) -> int:
        """Publish a blob whole or not at all; returns its size."""
        path = self.path(rel)
        if self.is_local:
            return local.write_atomic(path, chunks, exclusive=exclusive)
        if exclusive and self.fs.exists(path):
            raise FileExistsError(path)
        try:
            if self.is_object_store:
                return self._write_direct(path, chunks)
            tmp = posixpath.join(posixpath.dirname(path),
                                 f".{posixpath.basename(path)}{local.TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
            n = self._write_direct(tmp, chunks)
            self.fs.mv(tmp, path)
            return n
        except (OSError, ValueError) as exc:
            raise StorageError(f"writing {self.url}/{rel} failed: {exc}. Nothing already committed was "
                               f"changed.") from exc

    def _write_direct(self, path: str, chunks: Iterable[bytes | memoryview]) -> int:
        parent = posixpath.dirname(path)
        if parent and not self.is_object_store:
            self.fs.makedirs(parent, exist_ok=True)
        f = self.fs.open(path, "wb")
        n = 0
        try:
            for chunk in chunks:
                n += f.write(memoryview(chunk).cast("B") if not isinstance(chunk, bytes) else chunk) or 0
        except BaseException:
            discard = getattr(f, "discard", None)
            if discard:
                discard()
            try:
                f.close()
                self.fs.rm(path)
            except Exception:
                pass
            raise
        f.close()
        return n

    # -- reads ---------------------------------------------------------------------------------
    def read(self, rel: str, max_size: int) -> bytes:
        """A whole small blob (manifest, ref); refuses ones larger than ``max_size``."""
        with self.reader(rel) as r:
            if r.size > max_size:
                raise MissingBlobError(f"blob {rel} is {r.size} bytes, more than the {max_size} allowed; "
                                       f"it is not a valid ckpt file")
            return r.read(0, r.size)

    @contextmanager
    def open_reader(self, rel: str) -> Iterator[Reader]:
        r = Reader(self, rel)
        try:
            yield r
        finally:
            r.close()

    def reader(self, rel: str) -> Reader:
        return Reader(self, rel)

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return os.path.exists(self.path(rel))
        return self.fs.exists(self.path(rel))

    def size(self, rel: str) -> int:
        try:
            return int(os.path.getsize(self.path(rel)) if self.is_local else self.fs.size(self.path(rel)))
        except FileNotFoundError as exc:
            raise MissingBlobError(f"blob {rel} is missing") from exc

    def delete(self, rel: str) -> None:
        try:
            if self.is_local:
                os.unlink(self.path(rel))
            else:
                self.fs.rm(self.path(rel))
        except FileNotFoundError:
            pass

    def list(self, directory: str) -> list[Entry]:
        """Entries directly under ``directory`` (files only), including temp files."""
        path = self.path(directory)
        out: list[Entry] = []
        if self.is_local:
            try:
                with os.scandir(path) as it:
                    for e in it:
                        if e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            out.append(Entry(e.name, st.st_size, st.st_mtime))
            except FileNotFoundError:
                pass
            return out
        try:
            infos = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return out
        for info in infos:
            if info.get("type") == "directory":
                continue
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            out.append(Entry(posixpath.basename(info["name"].rstrip("/")), int(info.get("size") or 0),
                             float(mtime) if isinstance(mtime, (int, float)) else None))
        return out

    def makedirs(self, directory: str) -> None:
        if self.is_local:
            os.makedirs(self.path(directory), exist_ok=True)
        elif not self.is_object_store:
            self.fs.makedirs(self.path(directory), exist_ok=True)
