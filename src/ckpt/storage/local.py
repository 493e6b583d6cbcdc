"""Local disk: temp file beside the target, fsync, create-only link (or rename), fsync the directory.

This is restic's and git's recipe: a reader, or a crash, sees nothing or the whole blob. Create-only
publishing is ``link()``, which fails when the target exists; on filesystems without hard links it
falls back to ``renameat2(RENAME_NOREPLACE)`` and, where even that is missing, to claiming the name
with ``O_EXCL`` and renaming over the (empty) claim.

Temp files are named ``.NAME.tmp-PID-RAND`` so that gc can tell a dead writer's leftovers from a
live writer's work in progress (:func:`ckpt.storage.base.temp_owner_pid`).
"""

from __future__ import annotations

import errno
import os
import sys

from ckpt.errors import MissingBlobError, StorageError
from ckpt.storage.base import (BaseReader, BaseSink, BaseStorage, Entry, as_bytes_view, check_directory,
                               check_key, missing, temp_name)

#: Writes smaller than this are gathered into a buffer (one syscall per tiny tensor is slow).
SMALL_WRITE = 256 << 10
BUFFER_SIZE = 1 << 20
#: Largest single os.write (Linux writes at most ~2 GiB per call anyway).
MAX_WRITE = 1 << 30
#: errnos of link() that mean "this filesystem has no hard links", not "this write failed".
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def explain(exc: OSError, path: str) -> str:
    """A message for a failed write that says what to do."""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on device while writing {path}; free space (try `ckpt prune` then "
                f"`ckpt gc`) and save again. Nothing already committed was changed.")
    if exc.errno in (errno.EFBIG, errno.EDQUOT):
        return (f"writing {path} hit a file-size limit or disk quota ({exc.strerror}); raise `ulimit -f` or "
                f"the quota, or free space, and save again. Nothing already committed was changed.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror}; check permissions of the store directory."
    return f"writing {path} failed: {exc}. Nothing already committed was changed."


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = os.write(fd, view[done:done + MAX_WRITE])
        if n <= 0:  # pragma: no cover - a zero-byte write means the device is full
            raise OSError(errno.ENOSPC, "short write")
        done += n


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:  # pragma: no cover
            raise OSError(errno.ENOSPC, "short write")
        done += n


def _rename_noreplace(src: str, dst: str) -> bool:
    """Atomic create-only rename (Linux renameat2); False where the system or filesystem lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_noreplace = -100, 1
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), dst)
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


class LocalReader(BaseReader):
    """Positional reads (``preadv``) on one descriptor: any number of threads may read at once."""

    positional = True

    def __init__(self, url: str, key: str, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise missing(url, key) from exc
        try:
            size = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            raise
        super().__init__(url, key, size)

    def _read_into(self, offset: int, out: memoryview) -> None:
        done = 0
        while done < len(out):
            n = os.preadv(self._fd, [out[done:done + MAX_WRITE]], offset + done)
            if not n:  # the file shrank under us
                raise MissingBlobError(f"blob {self._key} in {self._url} ended early at byte "
                                       f"{offset + done}; run `ckpt verify`")
            done += n

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


class LocalSink(BaseSink):
    """Appends to a temp file beside the target; commit fills the reserve and publishes create-only."""

    def __init__(self, storage: "LocalStorage", key: str, reserve: int = 0) -> None:
        super().__init__(key, reserve)
        self._storage = storage
        self._path = storage.path(key)
        directory, name = os.path.split(self._path)
        self._tmp = os.path.join(directory, temp_name(name))
        self._fd: int | None = None
        self._buf = bytearray()  # BUFFER_SIZE once a small write comes
        self._fill = 0
        try:
            os.makedirs(directory, exist_ok=True)
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                               0o644)
            if reserve:
                os.lseek(self._fd, reserve, os.SEEK_SET)  # a hole, filled by commit(prefix)
        except OSError as exc:
            self.abort()
            raise StorageError(explain(exc, self._path)) from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; small pieces are gathered, large ones go straight to the file."""
        self._check_open()
        view = as_bytes_view(data)
        n = len(view)
        if not n:
            return
        try:
            if n < SMALL_WRITE:
                if not self._buf:
                    self._buf = bytearray(BUFFER_SIZE)
                if self._fill + n > len(self._buf):
                    self._flush()
                self._buf[self._fill:self._fill + n] = view
                self._fill += n
            else:
                self._flush()
                _write_all(self._fd, view)  # type: ignore[arg-type]
        except OSError as exc:
            self._fail(exc)
        self.position += n

    def _flush(self) -> None:
        if self._fill:
            _write_all(self._fd, memoryview(self._buf)[:self._fill])  # type: ignore[arg-type]
            self._fill = 0

    def _fail(self, exc: OSError) -> None:
        self.abort()  # frees the space at once: a full disk is the usual reason
        raise StorageError(explain(exc, self._path)) from exc

    def commit(self, prefix: bytes = b"") -> int:
        """Fill the reserve with ``prefix``, make the blob durable and visible; FileExistsError when taken."""
        self._check_open()
        self._check_prefix(prefix)
        fd = self._fd
        assert fd is not None
        try:
            self._flush()
            if prefix:
                _pwrite_all(fd, bytes(prefix), 0)
            os.fsync(fd)
            size = os.fstat(fd).st_size
            if size != self.position:  # as restic checks: the filesystem lost or invented bytes
                raise OSError(errno.EIO, f"wrote {self.position} bytes but the file has {size}")
            self._fd = None
            os.close(fd)
            self._storage._publish(self._tmp, self._path, create_only=True)
        except FileExistsError:
            self.abort()
            raise
        except OSError as exc:
            self._fail(exc)
        self.committed = True
        self._buf = bytearray()
        return self.position

    def abort(self) -> None:
        """Remove the temp file; idempotent, and a no-op after commit."""
        if self.committed or self.aborted:
            return
        self.aborted = True
        self._buf = bytearray()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass
            self._fd = None
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


class LocalStorage(BaseStorage):
    """A directory on a local (or mounted) filesystem."""

    protocol = "file"
    is_local = True
    is_object_store = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = self.root
        self._hard_links = True  # becomes False the first time link() says the filesystem has none

    def path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _dir_path(self, directory: str) -> str:
        directory = check_directory(directory)
        return os.path.join(self.root, *directory.split("/")) if directory else self.root

    # -- writes ---------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview, *, create_only: bool = False) -> int:
        """Publish ``data`` whole or not at all; with ``create_only`` an existing key is FileExistsError."""
        view = as_bytes_view(data)
        if create_only and not len(view):
            return self._create_empty(key)
        sink = LocalSink(self, key)
        fd = sink._fd
        try:
            _write_all(fd, view)  # type: ignore[arg-type]
            os.fsync(fd)  # type: ignore[arg-type]
            sink._fd = None
            os.close(fd)  # type: ignore[arg-type]
            self._publish(sink._tmp, sink._path, create_only=create_only)
        except FileExistsError:
            sink.abort()
            raise
        except OSError as exc:
            sink._fail(exc)
        sink.committed = True
        return len(view)

    def _create_empty(self, key: str) -> int:
        """An empty blob needs no temp file: O_EXCL makes it atomically, with only an inode (locks on
        a full disk)."""
        path = self.path(key)
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "already exists", path) from None
        except OSError as exc:
            raise StorageError(explain(exc, path)) from exc
        try:
            fsync_dir(directory)
        except OSError as exc:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise StorageError(explain(exc, path)) from exc
        return 0

    def _publish(self, tmp: str, final: str, *, create_only: bool) -> None:
        if not create_only:
            os.replace(tmp, final)
        else:
            try:
                self._link_create(tmp, final)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "already exists", final) from None
        fsync_dir(os.path.dirname(final))

    def _link_create(self, tmp: str, final: str) -> None:
        if self._hard_links:
            try:
                os.link(tmp, final)  # fails if final exists: an atomic create-only publish
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                self._hard_links = False
            else:
                os.unlink(tmp)
                return
        if _rename_noreplace(tmp, final):
            return
        # Last resort: claim the name with O_EXCL, then rename over the claim. A reader may see an
        # empty file for that instant; it is never a wrong non-empty one.
        os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.replace(tmp, final)

    def open_sink(self, key: str, *, reserve: int = 0) -> LocalSink:
        return LocalSink(self, key, reserve)

    # -- reads ----------------------------------------------------------------------------------
    def reader(self, key: str) -> LocalReader:
        return LocalReader(self.url, key, self.path(key))

    def exists(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def size(self, key: str) -> int:
        try:
            return os.stat(self.path(key)).st_size
        except FileNotFoundError as exc:
            raise missing(self.url, key) from exc

    def list(self, directory: str) -> list[Entry]:
        """Files directly under ``directory`` (temp files included); a missing directory is empty."""
        out: list[Entry] = []
        try:
            with os.scandir(self._dir_path(directory)) as it:
                for e in it:
                    try:
                        if e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            out.append(Entry(e.name, st.st_size, st.st_mtime))
                    except FileNotFoundError:  # removed while we listed
                        continue
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    # -- housekeeping ---------------------------------------------------------------------------
    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete {self.path(key)}: {exc.strerror}; check permissions of the "
                               f"store directory") from exc
        return True

    def touch(self, key: str) -> None:
        """Set the mtime to now (lock refresh); MissingBlobError when the blob is gone."""
        try:
            os.utime(self.path(key))
        except FileNotFoundError as exc:
            raise missing(self.url, key) from exc
        except OSError as exc:
            raise StorageError(explain(exc, self.path(key))) from exc

    def makedirs(self, directory: str) -> None:
        try:
            os.makedirs(self._dir_path(directory), exist_ok=True)
        except OSError as exc:
            raise StorageError(explain(exc, self._dir_path(directory))) from exc
