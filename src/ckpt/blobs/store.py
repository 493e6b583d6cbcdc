"""fsspec-backed blob storage with one contract for local disk, memory:// and object stores.

Keys passed in are relative paths that ckpt builds from digests and ids, never from user strings.

Object stores have no rename, so nothing is staged under a temp name there: every blob is published by
one request that makes it visible whole or not at all. On S3 (and S3-compatible servers) that request
is conditional, ``If-None-Match: *``, for everything the format says is immutable (packs, manifests,
the store marker): a second writer of the same key gets ``FileExistsError`` instead of silently
replacing the first one's bytes, with no window between a check and the write. Blobs larger than
:data:`S3_PART_SIZE` go up as a multipart upload (parts in parallel); the object appears only when
the upload is completed, so a writer killed halfway leaves no object, only an incomplete upload that
:meth:`BlobStore.abort_stale_uploads` (run by gc) or a bucket lifecycle rule removes.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ckpt.blobs import local
from ckpt.errors import MissingBlobError, StorageError

OBJECT_STORE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}
S3_PROTOCOLS = {"s3", "s3a"}
#: Keys the format never rewrites (docs/format.md, invariant 4): always written create-only.
IMMUTABLE_PREFIXES = ("packs/", "manifests/", "ckpt-store.json")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


#: Size of the first parts of a multipart upload; a blob at most this large is one PUT. S3 needs
#: >= 5 MiB. Every 1000 parts the size grows by this much, so S3's 10,000-part limit allows objects
#: of 55,000 x this size (1.7 TiB at the default).
S3_PART_SIZE = _env_int("CKPT_S3_PART_SIZE", 32 << 20)
#: Parts of one upload in flight at once (memory use is about this many parts).
S3_CONCURRENCY = max(1, _env_int("CKPT_S3_CONCURRENCY", 8))
#: Set CKPT_S3_CONDITIONAL_WRITES=0 for S3-compatible servers that reject If-None-Match on PUT; writes
#: of immutable keys then check for the key first (safe for ckpt's random ids, but not race-free).
S3_CONDITIONAL = os.environ.get("CKPT_S3_CONDITIONAL_WRITES", "1") not in ("0", "false", "no")


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

    @property
    def positional(self) -> bool:
        """Whether several threads may read at once (positional reads on a local descriptor)."""
        return self._local_fd is not None

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
        options = dict(storage_options or {})
        scheme = location.split("://", 1)[0].lower() if "://" in location else "file"
        if scheme in S3_PROTOCOLS:
            # Other processes and hosts write the same prefix: a cached listing would hide their
            # manifests from reindex and gc, and a cached "missing" would hide their packs.
            options.setdefault("use_listings_cache", False)
        fs, root = fsspec.core.url_to_fs(location, **options)
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = proto
        self.is_local = isinstance(fs, LocalFileSystem)
        self.is_object_store = proto in OBJECT_STORE_PROTOCOLS
        self.is_s3 = proto in S3_PROTOCOLS and hasattr(fs, "_call_s3")
        self.url = self.root if self.is_local else f"{proto}://{self.root.lstrip('/')}"
        self.part_size = S3_PART_SIZE
        self.concurrency = S3_CONCURRENCY

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        if self.is_local:
            return os.path.join(self.root, *rel.split("/"))
        return posixpath.join(self.root, rel)

    # -- writes --------------------------------------------------------------------------------
    def write(self, rel: str, chunks: Iterable[bytes | memoryview], *, exclusive: bool = False) -> int:
        """Publish a blob whole or not at all; returns its size.

        With ``exclusive`` (and, on object stores, for every key the format never rewrites) an existing
        blob is an error, ``FileExistsError``, and is left untouched.
        """
        path = self.path(rel)
        if self.is_local:
            return local.write_atomic(path, chunks, exclusive=exclusive)
        create_only = exclusive or (self.is_object_store and rel.startswith(IMMUTABLE_PREFIXES))
        if self.is_s3:
            return self._write_s3(rel, path, chunks, create_only)
        if create_only and self.fs.exists(path):
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

    # -- S3 --------------------------------------------------------------------------------------
    def _write_s3(self, rel: str, path: str, chunks: Iterable[bytes | memoryview], create_only: bool) -> int:
        from fsspec.asyn import sync
        if create_only and not S3_CONDITIONAL and self.fs.exists(path):
            raise FileExistsError(path)
        bucket, key, _ = self.fs.split_path(path)
        conditional = create_only and S3_CONDITIONAL
        try:
            return sync(self.fs.loop, self._s3_upload, bucket, key, chunks, conditional)
        except FileExistsError:
            raise
        except Exception as exc:  # s3fs's OSErrors, and botocore's own (endpoint, credentials)
            raise StorageError(f"writing {self.url}/{rel} failed: {exc}. Nothing already committed was "
                               f"changed.") from exc

    async def _s3_upload(self, bucket: str, key: str, chunks: Iterable[bytes | memoryview],
                         conditional: bool) -> int:
        match = {"IfNoneMatch": "*"} if conditional else {}
        call = self.fs._call_s3
        base = max(1, self.part_size)
        parts = _split(chunks, lambda n: base * (1 + n // 1000))
        first = next(parts, bytearray())
        second = next(parts, None)
        if second is None:  # one request: the object appears whole or not at all
            await call("put_object", Bucket=bucket, Key=key, Body=first, **match)
            return len(first)
        upload = await call("create_multipart_upload", Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        done: dict[int, dict] = {}
        tasks: list[asyncio.Future] = []
        slots = asyncio.Semaphore(self.concurrency)
        total = 0

        async def put_part(number: int, body: bytearray) -> None:
            try:
                out = await call("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                                 PartNumber=number, Body=body)
                part = {"PartNumber": number, "ETag": out["ETag"]}
                part.update({k: v for k, v in out.items() if k.startswith("Checksum") and k != "ChecksumType"})
                done[number] = part
            finally:
                slots.release()

        try:
            number = 0
            for body in _chain(first, second, parts):
                number += 1
                total += len(body)
                await slots.acquire()  # bounds memory to `concurrency` parts in flight
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                tasks.append(asyncio.ensure_future(put_part(number, body)))
            await asyncio.gather(*tasks)
            await call("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": [done[n] for n in sorted(done)]}, **match)
        except BaseException:
            for t in tasks:
                t.cancel()
            try:
                await call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # pragma: no cover - gc's abort_stale_uploads cleans up later
                pass
            raise
        return total

    def abort_stale_uploads(self, older_than_seconds: float, *, dry_run: bool = False) -> list[str]:
        """Abort multipart uploads under this store's root begun more than ``older_than_seconds`` ago.

        A writer killed during a multipart upload leaves invisible parts that still cost storage;
        returns the keys (relative to the root) of the uploads aborted. A no-op off S3.
        """
        if not self.is_s3:
            return []
        from fsspec.asyn import sync
        bucket, prefix, _ = self.fs.split_path(self.root)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        cutoff = time.time() - older_than_seconds
        found: list[tuple[str, str]] = []
        kwargs: dict = {"Bucket": bucket, "Prefix": prefix}
        while True:
            out = self.fs.call_s3("list_multipart_uploads", **kwargs)
            for u in out.get("Uploads", []):
                initiated = u.get("Initiated")
                ts = initiated.timestamp() if hasattr(initiated, "timestamp") else 0.0
                if ts < cutoff:
                    found.append((u["Key"], u["UploadId"]))
            if not out.get("IsTruncated"):
                break
            kwargs.update(KeyMarker=out.get("NextKeyMarker"), UploadIdMarker=out.get("NextUploadIdMarker"))
        if not dry_run:
            async def abort_all() -> None:
                await asyncio.gather(*[self.fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=k,
                                                        UploadId=uid) for k, uid in found],
                                     return_exceptions=True)
            if found:
                sync(self.fs.loop, abort_all)
        return [k[len(prefix):] for k, _ in found]

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
            infos = self.fs.ls(path, detail=True, refresh=True) if self.is_object_store else \
                self.fs.ls(path, detail=True)
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


def _split(chunks: Iterable[bytes | memoryview], size_of: Callable[[int], int]) -> Iterator[bytearray]:
    """Re-cut a stream of chunks into pieces of exactly ``size_of(n)`` bytes for the n-th piece (from 0;
    the last piece shorter)."""
    buf = bytearray()
    n = 0
    size = size_of(0)
    for chunk in chunks:
        view = memoryview(chunk)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        pos = 0
        while pos < len(view):
            take = min(size - len(buf), len(view) - pos)
            buf += view[pos:pos + take]
            pos += take
            if len(buf) == size:
                yield buf
                buf = bytearray()
                n += 1
                size = size_of(n)
    if buf:
        yield buf


def _chain(first: bytearray, second: bytearray, rest: Iterator[bytearray]) -> Iterator[bytearray]:
    yield first
    yield second
    yield from rest
