"""Any other fsspec filesystem (memory://, gcs://, az://, sftp://...): whole-blob writes.

fsspec files cannot be written at an offset, so a sink gathers the blob (in memory for memory://,
in a spooled temp file elsewhere), fills the reserve at commit and writes the blob in one go.
Create-only checks for the key first: race-free only where the filesystem itself is (memory:// is,
within its one process). Object stores among these make an object visible only when its upload
completes; the others get a temp name and a move.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from datetime import datetime, timezone
from typing import Any

from ckpt.errors import MissingBlobError, StorageError
from ckpt.storage.base import (BaseReader, BaseSink, BaseStorage, Entry, as_bytes_view, check_directory,
                               check_key, missing, temp_name)

OBJECT_STORE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}
#: A sink for a non-memory filesystem keeps this much in memory before spilling to a temp file.
SPOOL_IN_MEMORY = 64 << 20
#: Largest single ranged read (cat_file returns a fresh bytes object: bound the transient copy).
READ_CHUNK = 64 << 20


def _mtime(info: dict[str, Any]) -> float | None:
    for field in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(field)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


class FsspecReader(BaseReader):
    """Ranged reads through ``cat_file``: stateless, so several threads may read at once."""

    positional = True

    def __init__(self, storage: "FsspecStorage", key: str) -> None:
        self._fs = storage.fs
        self._path = storage.path(key)
        try:
            info = self._fs.info(self._path)
        except FileNotFoundError as exc:
            raise missing(storage.url, key) from exc
        if info.get("type") == "directory":
            raise missing(storage.url, key)
        super().__init__(storage.url, key, int(info.get("size") or 0))

    def _read_into(self, offset: int, out: memoryview) -> None:
        done = 0
        while done < len(out):
            n = min(READ_CHUNK, len(out) - done)
            try:
                data = self._fs.cat_file(self._path, start=offset + done, end=offset + done + n)
            except FileNotFoundError as exc:
                raise missing(self._url, self._key) from exc
            if len(data) != n:
                raise MissingBlobError(f"blob {self._key} in {self._url} ended early at byte "
                                       f"{offset + done + len(data)}; run `ckpt verify`")
            out[done:done + n] = data
            done += n


class FsspecSink(BaseSink):
    """Gathers the blob, then publishes it whole at commit (create-only)."""

    def __init__(self, storage: "FsspecStorage", key: str, reserve: int = 0) -> None:
        super().__init__(key, reserve)
        check_key(key)
        self._storage = storage
        self._mem: bytearray | None = None
        self._spool: Any = None
        if storage.protocol == "memory":
            self._mem = bytearray(reserve)
        else:
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
            self._spool.seek(reserve)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        view = as_bytes_view(data)
        if self._mem is not None:
            self._mem += view
        else:
            try:
                self._spool.write(view)
            except OSError as exc:
                self.abort()
                raise StorageError(f"spooling {self.key} for {self._storage.url} to a temp file failed: "
                                   f"{exc}; free space in {tempfile.gettempdir()} or set TMPDIR") from exc
        self.position += len(view)

    def commit(self, prefix: bytes = b"") -> int:
        self._check_open()
        self._check_prefix(prefix)
        try:
            if self._mem is not None:
                self._mem[:self.reserve] = prefix
                self._storage.put(self.key, self._mem, create_only=True)
            else:
                self._spool.seek(0)
                self._spool.write(prefix)
                self._spool.seek(0)
                self._storage._put_file(self.key, self._spool, create_only=True)
        except BaseException:
            self.abort()
            raise
        self.committed = True
        self._release()
        return self.position

    def _release(self) -> None:
        self._mem = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def abort(self) -> None:
        if self.committed or self.aborted:
            return
        self.aborted = True
        self._release()


class FsspecStorage(BaseStorage):
    """One root on one fsspec filesystem."""

    def __init__(self, location: str, storage_options: dict | None = None) -> None:
        import fsspec
        fs, root = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
        self.fs = fs
        self.root = root.rstrip("/")
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = proto
        self.is_object_store = proto in OBJECT_STORE_PROTOCOLS
        self.url = f"{proto}://{self.root.lstrip('/')}"

    def path(self, key: str) -> str:
        return posixpath.join(self.root, check_key(key)) if self.root else check_key(key)

    def _dir_path(self, directory: str) -> str:
        directory = check_directory(directory)
        return posixpath.join(self.root, directory) if directory else (self.root or "/")

    def _error(self, key: str, exc: BaseException) -> StorageError:
        return StorageError(f"writing {self.url}/{key} failed: {exc}. Nothing already committed was changed.")

    # -- writes ---------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview, *, create_only: bool = False) -> int:
        view = as_bytes_view(data)
        path = self.path(key)
        if self.protocol == "memory":
            # MemoryFileSystem's "create" mode checks and stores in one call: whole or nothing.
            try:
                self.fs.pipe_file(path, bytes(view), mode="create" if create_only else "overwrite")
            except FileExistsError:
                raise FileExistsError(f"{self.url}/{key} already exists") from None
            return len(view)
        import io
        return self._put_file(key, io.BytesIO(view), create_only=create_only)

    def _put_file(self, key: str, src: Any, *, create_only: bool) -> int:
        path = self.path(key)
        if self.protocol == "memory":
            return self.put(key, src.read(), create_only=create_only)
        if create_only and self.fs.exists(path):
            raise FileExistsError(f"{self.url}/{key} already exists")
        try:
            if self.is_object_store:  # the object appears when the upload completes
                return self._copy_to(path, src)
            parent = posixpath.dirname(path)
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, temp_name(posixpath.basename(path)))
            try:
                n = self._copy_to(tmp, src)
                if create_only and self.fs.exists(path):
                    raise FileExistsError(f"{self.url}/{key} already exists")
                self.fs.mv(tmp, path)
            except BaseException:
                try:
                    self.fs.rm_file(tmp)
                except Exception:
                    pass
                raise
            return n
        except FileExistsError:
            raise
        except (OSError, ValueError) as exc:
            raise self._error(key, exc) from exc

    def _copy_to(self, path: str, src: Any) -> int:
        with self.fs.open(path, "wb") as f:
            shutil.copyfileobj(src, f, 8 << 20)
            return f.tell() if hasattr(f, "tell") else 0

    def open_sink(self, key: str, *, reserve: int = 0) -> FsspecSink:
        return FsspecSink(self, key, reserve)

    # -- reads ----------------------------------------------------------------------------------
    def reader(self, key: str) -> FsspecReader:
        return FsspecReader(self, key)

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self.path(key)))

    def size(self, key: str) -> int:
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError as exc:
            raise missing(self.url, key) from exc
        if info.get("type") == "directory":
            raise missing(self.url, key)
        return int(info.get("size") or 0)

    def list(self, directory: str) -> list[Entry]:
        path = self._dir_path(directory)
        try:
            infos = self.fs.ls(path, detail=True, refresh=True) if self.is_object_store else \
                self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for info in infos:
            name = info["name"].rstrip("/")
            if info.get("type") == "directory" or name == path.rstrip("/"):
                continue  # memory:// lists a file's own path when asked for a file
            out.append(Entry(posixpath.basename(name), int(info.get("size") or 0), _mtime(info)))
        return out

    # -- housekeeping ---------------------------------------------------------------------------
    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            if not self.fs.isfile(path):
                return False
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete {self.url}/{key}: {exc}") from exc
        return True

    def touch(self, key: str) -> None:
        """Move the blob's modification time to now (lock refresh); MissingBlobError when gone."""
        path = self.path(key)
        store = getattr(self.fs, "store", None)
        if self.protocol == "memory" and isinstance(store, dict):
            f = store.get(self.fs._strip_protocol(path))
            if f is None:
                raise missing(self.url, key)
            f.created = f.modified = datetime.now(tz=timezone.utc)
            return
        if not self.fs.isfile(path):
            raise missing(self.url, key)
        try:
            self.fs.touch(path, truncate=False)
        except NotImplementedError:
            if self.fs.size(path) != 0:
                raise StorageError(f"{self.url} cannot refresh the modification time of {key}") from None
            self.fs.pipe_file(path, b"")  # an empty blob (a lock): rewriting it is the refresh
        except OSError as exc:
            raise StorageError(f"refreshing {self.url}/{key} failed: {exc}") from exc

    def makedirs(self, directory: str) -> None:
        if not self.is_object_store:
            self.fs.makedirs(self._dir_path(directory), exist_ok=True)
