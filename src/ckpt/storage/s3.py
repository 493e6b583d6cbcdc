"""S3 (and S3-compatible servers) through s3fs's async client: streaming, conditional writes.

Object stores have no rename, so nothing is staged under a temp name: every blob is published by
one request that makes it visible whole or not at all, and for create-only writes that request is
conditional (``If-None-Match: *``), so a second writer of the same key gets ``FileExistsError``
instead of silently replacing the first one's bytes. A sink streams a multipart upload with bounded
memory and never spools to local disk: parts of ``part_size`` go up as they fill, at most
``concurrency`` at a time; the parts that overlap the reserved prefix (normally just the first) are
held back and uploaded last, once ``commit(prefix)`` has filled them. A writer killed halfway
leaves no object, only an incomplete upload that :meth:`S3Storage.abort_stale_uploads` (run by gc)
or a bucket lifecycle rule removes.

Every listing is fresh (no listings cache): other hosts write the same prefix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import time
from typing import Any

from ckpt.errors import CorruptCheckpointError, MissingBlobError, StorageError
from ckpt.storage.base import (BaseReader, BaseSink, BaseStorage, Entry, as_bytes_view, check_directory,
                               check_key, missing)

log = logging.getLogger(__name__)

#: S3 allows at most this many parts in one upload.
MAX_PARTS = 10_000


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _write_error(url: str, key: str, exc: BaseException) -> StorageError:
    if isinstance(exc, PermissionError):
        return StorageError(f"writing {url}/{key} was refused ({exc}); check the credentials and the "
                            f"bucket policy. Nothing already committed was changed.")
    return StorageError(f"writing {url}/{key} failed: {exc}. Nothing already committed was changed.")


def _read_error(url: str, key: str, exc: BaseException) -> StorageError:
    return StorageError(f"reading {url}/{key} failed: {exc}; check the network and credentials, then retry")


def _is_conflict(exc: BaseException) -> bool:
    """S3's 409 ConditionalRequestConflict: a concurrent conditional write; retrying settles it."""
    return "ConditionalRequestConflict" in str(exc)


class _Body(io.RawIOBase):
    """A read-only, seekable file over a buffer, as a request body.

    botocore turns ``bytes`` bodies into a BytesIO, whose whole buffer aiohttp then copies
    (``getbuffer``), and aiohttp copies a ``bytearray`` when sending it: either would double the
    memory of every part in flight. This file is read in small chunks instead.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        super().__init__()
        view = memoryview(data)  # our own view object even over a caller's memoryview: close() releases it
        self._view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        memoryview(b).cast("B")[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos:end].tobytes() if end > self._pos else b""
        self._pos = max(self._pos, end)
        return chunk

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        """Let go of the buffer (whoever still holds this file reads nothing more)."""
        self._view.release()
        super().close()


class S3Reader(BaseReader):
    """Ranged GETs, pinned to the ETag seen at open; large reads are split into concurrent ranges."""

    positional = True

    def __init__(self, storage: "S3Storage", key: str) -> None:
        self._s = storage
        self._k = storage._key(key)
        head = storage._head(key)
        self._etag = head.get("ETag")
        super().__init__(storage.url, key, int(head["ContentLength"]))

    def _read_into(self, offset: int, out: memoryview) -> None:
        try:
            self._s._sync(self._fetch, offset, out)
        except (MissingBlobError, StorageError):
            raise
        except FileNotFoundError as exc:
            raise missing(self._url, self._key) from exc
        except Exception as exc:
            raise _read_error(self._url, self._key, exc) from exc

    async def _fetch(self, offset: int, out: memoryview) -> None:
        piece = max(self._s.part_size, 8 << 20)
        if len(out) <= 2 * piece:
            await self._get_range(offset, out)
            return
        slots = asyncio.Semaphore(self._s.concurrency)

        async def one(start: int) -> None:
            async with slots:
                await self._get_range(offset + start, out[start:start + piece])
        await asyncio.gather(*[one(start) for start in range(0, len(out), piece)])

    async def _get_range(self, offset: int, out: memoryview) -> None:
        kwargs: dict[str, Any] = {"IfMatch": self._etag} if self._etag else {}
        for attempt in range(3):
            done = 0
            try:
                resp = await self._s.fs._call_s3("get_object", Bucket=self._s.bucket, Key=self._k,
                                                 Range=f"bytes={offset}-{offset + len(out) - 1}", **kwargs)
                body = resp["Body"]
                try:
                    while done < len(out):
                        n = await body.readinto(out[done:])
                        if not n:
                            break
                        done += n
                finally:
                    body.close()
            except FileNotFoundError:
                raise
            except Exception:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if done != len(out):
                raise MissingBlobError(f"blob {self._key} in {self._url} ended early at byte {offset + done}; "
                                       f"run `ckpt verify`")
            return


class S3Sink(BaseSink):
    """A streaming multipart upload; memory is bounded by (concurrency + 1) parts."""

    def __init__(self, storage: "S3Storage", key: str, reserve: int = 0) -> None:
        super().__init__(key, reserve)
        self._s = storage
        self._k = storage._key(key)
        self._number = 1                      # the part being filled
        self._start = 0                       # its offset in the blob
        self._cur = bytearray(self._size_of(1))
        self._fill = 0
        self._held: dict[int, tuple[int, bytearray]] = {}  # parts overlapping the reserve
        self._upload_id: str | None = None
        self._inflight: set[concurrent.futures.Future] = set()
        self._parts: dict[int, dict] = {}
        try:
            self._append(None, reserve)  # zeros: fresh bytearrays already are
        except BaseException:
            self.abort()
            raise

    def _size_of(self, number: int) -> int:
        # Every 1000 parts the size grows by one base size, so 10,000 parts reach 55,000 base sizes
        # (1.7 TiB at 32 MiB).
        return max(1, self._s.part_size) * (1 + (number - 1) // 1000)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (copied: the caller may reuse its buffer at once)."""
        self._check_open()
        view = as_bytes_view(data)
        try:
            self._append(view, len(view))
        except BaseException as exc:
            self.abort()
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise _write_error(self._s.url, self.key, exc) from exc
            raise
        self.position += len(view)

    def _append(self, view: memoryview | None, n: int) -> None:
        pos = 0
        while pos < n:
            if self._fill == len(self._cur):  # full, and more is coming: hand it off
                self._finish_current()
            take = min(len(self._cur) - self._fill, n - pos)
            if view is not None:
                self._cur[self._fill:self._fill + take] = view[pos:pos + take]
            self._fill += take
            pos += take

    def _finish_current(self) -> None:
        buf, number, start = self._cur, self._number, self._start
        if number >= MAX_PARTS:
            raise StorageError(f"{self.key} is larger than an S3 upload of {MAX_PARTS} parts allows; raise "
                               f"CKPT_S3_PART_SIZE")
        self._cur = bytearray()
        if start < self.reserve:
            self._held[number] = (start, buf)
        else:
            self._submit(number, buf)
        del buf
        self._number += 1
        self._start += self._size_of(number)
        self._cur = bytearray(self._size_of(self._number))
        self._fill = 0

    def _submit(self, number: int, body: bytearray) -> None:
        """Upload one part in the background, once there is room: parts held back count against
        ``concurrency``, so memory stays within (concurrency + 1) parts (the one filling included)."""
        if self._upload_id is None:
            out = self._s._call("create_multipart_upload", Bucket=self._s.bucket, Key=self._k)
            self._upload_id = out["UploadId"]
        self._wait(max(0, self._s.concurrency - 1 - len(self._held)))
        self._inflight.add(asyncio.run_coroutine_threadsafe(self._upload_part(number, body), self._s.fs.loop))

    async def _upload_part(self, number: int, body: bytearray) -> dict:
        try:
            out = await self._s._send("upload_part", body, Bucket=self._s.bucket, Key=self._k,
                                      UploadId=self._upload_id, PartNumber=number)
        finally:
            try:
                body.clear()  # free the part now, not when the HTTP machinery lets go of its request
            except BufferError:  # pragma: no cover - still exported somewhere; freed later
                pass
        return {"PartNumber": number, "ETag": out["ETag"]}

    def _wait(self, limit: int) -> None:
        """Block until at most ``limit`` parts are in flight; re-raise the first failure."""
        while len(self._inflight) > limit:
            done, _ = concurrent.futures.wait(self._inflight, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in done:
                self._inflight.discard(f)
                part = f.result()
                self._parts[part["PartNumber"]] = part

    def commit(self, prefix: bytes = b"") -> int:
        """Fill the reserve, upload what is held back and complete the upload, create-only."""
        self._check_open()
        self._check_prefix(prefix)
        try:
            last, self._cur = self._cur, bytearray()
            del last[self._fill:]
            if self._number == 1:  # one part: one conditional PutObject
                last[:self.reserve] = prefix
                self._s.put(self.key, last, create_only=True)
            else:
                if self._start < self.reserve:
                    self._held[self._number] = (self._start, last)
                else:
                    self._submit(self._number, last)
                del last
                for number in sorted(self._held):
                    start, buf = self._held.pop(number)
                    end = min(start + len(buf), self.reserve)
                    buf[:end - start] = prefix[start:end]
                    self._submit(number, buf)
                    del buf
                self._wait(0)
                assert self._upload_id is not None
                self._s._complete(self.key, self._upload_id, [self._parts[n] for n in sorted(self._parts)])
        except FileExistsError:
            self.abort()
            raise
        except BaseException as exc:
            self.abort()
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise _write_error(self._s.url, self.key, exc) from exc
            raise
        self.committed = True
        return self.position

    def abort(self) -> None:
        """Cancel the parts in flight and abort the upload; idempotent, a no-op after commit."""
        if self.committed or self.aborted:
            return
        self.aborted = True
        for f in self._inflight:
            f.cancel()
        if self._inflight:
            concurrent.futures.wait(self._inflight, timeout=30)
        self._inflight.clear()
        self._cur = bytearray()
        self._held.clear()
        if self._upload_id is not None:
            try:
                self._s._call("abort_multipart_upload", Bucket=self._s.bucket, Key=self._k,
                              UploadId=self._upload_id)
            except Exception as exc:  # gc's abort_stale_uploads, or a lifecycle rule, cleans up later
                log.warning("could not abort the upload of %s/%s (%s); `ckpt gc` removes it later",
                            self._s.url, self.key, exc)


class S3Storage(BaseStorage):
    """One prefix of one bucket."""

    protocol = "s3"
    is_local = False
    is_object_store = True

    def __init__(self, location: str, storage_options: dict | None = None) -> None:
        import fsspec
        options = dict(storage_options or {})
        # Other processes and hosts write the same prefix: a cached listing would hide their
        # manifests and locks, and a cached "missing" their packs.
        options.setdefault("use_listings_cache", False)
        fs, root = fsspec.core.url_to_fs(location, **options)
        if not hasattr(fs, "_call_s3"):
            raise ValueError(f"{location} is not served by s3fs")
        self.fs = fs
        root = root.strip("/")
        self.bucket, _, prefix = root.partition("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{root}"
        #: Size of the parts of a multipart upload; a blob at most this large is one PutObject.
        #: S3 needs >= 5 MiB.
        self.part_size = _env_int("CKPT_S3_PART_SIZE", 32 << 20)
        #: Parts of one upload in flight at once.
        self.concurrency = max(1, _env_int("CKPT_S3_CONCURRENCY", 8))
        #: CKPT_S3_CONDITIONAL_WRITES=0 for servers that reject If-None-Match: create-only writes then
        #: check for the key first (safe for ckpt's random ids, but not race-free).
        self.conditional = os.environ.get("CKPT_S3_CONDITIONAL_WRITES", "1").lower() not in ("0", "false", "no")

    # -- plumbing -------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _sync(self, coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
        from fsspec.asyn import sync
        return sync(self.fs.loop, coro_fn, *args, **kwargs)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self._sync(self.fs._call_s3, method, **kwargs)

    async def _send(self, method: str, body: bytes | bytearray | memoryview, **kwargs: Any) -> dict:
        """``fs._call_s3`` for a request with a body, with a fresh :class:`_Body` for each attempt
        (s3fs retries with the same arguments, and a file object already read to its end would go
        as an empty body)."""
        from s3fs.core import _error_wrapper
        fs = self.fs
        await fs.set_session()
        client = await fs.get_s3(kwargs.get("Bucket"))
        method_fn = getattr(client, method)
        merged = fs._get_s3_method_kwargs(method_fn, **kwargs)

        async def attempt(**kw: Any) -> dict:
            f = _Body(body)
            try:
                return await method_fn(Body=f, **kw)
            finally:
                f.close()
        return await _error_wrapper(attempt, kwargs=merged, retries=fs.retries)

    def _head(self, key: str) -> dict:
        k = self._key(key)
        try:
            return self._call("head_object", Bucket=self.bucket, Key=k)
        except FileNotFoundError as exc:
            raise missing(self.url, key) from exc
        except Exception as exc:
            raise _read_error(self.url, key, exc) from exc

    # -- writes ---------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview, *, create_only: bool = False) -> int:
        """One PutObject: whole or nothing; with ``create_only`` conditional (FileExistsError)."""
        k = self._key(key)
        body = as_bytes_view(data)
        conditional = create_only and self.conditional
        for attempt in range(3):
            try:
                if create_only and not self.conditional and self.exists(key):
                    raise FileExistsError(f"{self.url}/{key} already exists")
                self._sync(self._send, "put_object", body, Bucket=self.bucket, Key=k,
                           **({"IfNoneMatch": "*"} if conditional else {}))
                return len(body)
            except FileExistsError as exc:
                raise FileExistsError(f"{self.url}/{key} already exists") from exc
            except Exception as exc:
                if _is_conflict(exc) and attempt < 2:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise _write_error(self.url, key, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _complete(self, key: str, upload_id: str, parts: list[dict]) -> None:
        conditional = self.conditional
        for attempt in range(3):
            if not conditional and self.exists(key):
                raise FileExistsError(f"{self.url}/{key} already exists")
            try:
                self._call("complete_multipart_upload", Bucket=self.bucket, Key=self._key(key),
                           UploadId=upload_id, MultipartUpload={"Parts": parts},
                           **({"IfNoneMatch": "*"} if conditional else {}))
                return
            except FileExistsError as exc:
                raise FileExistsError(f"{self.url}/{key} already exists") from exc
            except Exception as exc:
                if _is_conflict(exc) and attempt < 2:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise

    def open_sink(self, key: str, *, reserve: int = 0) -> S3Sink:
        return S3Sink(self, key, reserve)

    # -- reads ----------------------------------------------------------------------------------
    def reader(self, key: str) -> S3Reader:
        return S3Reader(self, key)

    def read(self, key: str, max_size: int) -> bytes:
        """One GET; a blob larger than ``max_size`` is refused from its headers, before its body."""
        k = self._key(key)

        async def get() -> bytes:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=k)
            body = resp["Body"]
            try:
                self._check_max_size(key, int(resp["ContentLength"]), max_size)
                return await body.read()
            finally:
                body.close()
        try:
            return self._sync(get)
        except FileNotFoundError as exc:
            raise missing(self.url, key) from exc
        except (CorruptCheckpointError, StorageError):
            raise
        except Exception as exc:
            raise _read_error(self.url, key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except MissingBlobError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def list(self, directory: str) -> list[Entry]:
        """Objects directly under ``directory``, from a fresh listing; none is []."""
        directory = check_directory(directory)
        prefix = self.prefix + (f"{directory}/" if directory else "")
        out: list[Entry] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
        try:
            while True:
                page = self._call("list_objects_v2", **kwargs)
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if name and "/" not in name:
                        modified = obj.get("LastModified")
                        out.append(Entry(name, int(obj.get("Size", 0)),
                                         modified.timestamp() if modified is not None else None))
                if not page.get("IsTruncated"):
                    return out
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        except FileNotFoundError:  # no such bucket
            return []
        except Exception as exc:
            raise _read_error(self.url, directory or ".", exc) from exc

    # -- housekeeping ---------------------------------------------------------------------------
    def delete(self, key: str) -> bool:
        k = self._key(key)
        if not self.exists(key):
            return False
        try:
            self._call("delete_object", Bucket=self.bucket, Key=k)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StorageError(f"cannot delete {self.url}/{key}: {exc}") from exc
        return True

    def touch(self, key: str) -> None:
        """Move LastModified to now without ever re-creating a deleted object (a lock removed as
        stale must stay removed): an empty object is re-PUT with ``If-Match`` its ETag, others are
        copied onto themselves with ``CopySourceIfMatch``."""
        head = self._head(key)
        etag = head.get("ETag")
        k = self._key(key)
        try:
            if int(head["ContentLength"]) == 0:
                match = {"IfMatch": etag} if etag and self.conditional else {}
                self._call("put_object", Bucket=self.bucket, Key=k, Body=b"", **match)
            else:
                match = {"CopySourceIfMatch": etag} if etag else {}
                self._call("copy_object", Bucket=self.bucket, Key=k, CopySource={"Bucket": self.bucket, "Key": k},
                           MetadataDirective="REPLACE", **match)
        except FileNotFoundError as exc:
            raise missing(self.url, key) from exc
        except Exception as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc) or "Precondition" in type(exc).__name__:
                raise missing(self.url, key) from exc
            raise StorageError(f"refreshing {self.url}/{key} failed: {exc}") from exc

    def makedirs(self, directory: str) -> None:
        check_directory(directory)  # object stores have no directories

    def abort_stale_uploads(self, older_than_seconds: float, *, dry_run: bool = False) -> list[str]:
        """Abort multipart uploads under this prefix begun more than ``older_than_seconds`` ago.

        A writer killed during an upload leaves invisible parts that still cost storage. Returns the
        keys (relative to the store) of the uploads aborted (or, with ``dry_run``, found).
        """
        cutoff = time.time() - older_than_seconds
        found: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = self._call("list_multipart_uploads", **kwargs)
            for u in page.get("Uploads", []):
                initiated = u.get("Initiated")
                ts = initiated.timestamp() if hasattr(initiated, "timestamp") else 0.0
                if ts <= cutoff:
                    found.append((u["Key"], u["UploadId"]))
            if not page.get("IsTruncated"):
                break
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))
        if found and not dry_run:
            async def abort_all() -> list:
                return await asyncio.gather(*[self.fs._call_s3("abort_multipart_upload", Bucket=self.bucket,
                                                               Key=k, UploadId=uid) for k, uid in found],
                                            return_exceptions=True)
            for (k, _), result in zip(found, self._sync(abort_all)):
                if isinstance(result, Exception) and not isinstance(result, FileNotFoundError):
                    log.warning("could not abort the upload of %s: %s", k, result)
        return [k[len(self.prefix):] for k, _ in found]
