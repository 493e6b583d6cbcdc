"""Crash-safe local writes: temp file in the same directory, fsync, rename, fsync the directory.

This is restic's and git's recipe. fsspec's own local transactions move files from the system temp dir
(not atomic across devices) and never fsync, so local disk gets this dedicated path.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable

from ckpt.errors import StorageError

TMP_MARKER = ".tmp-"


def temp_name(final_path: str) -> str:
    """A temp path beside ``final_path`` that names the writing process, so recovery can tell live from dead."""
    head, tail = os.path.split(final_path)
    return os.path.join(head, f".{tail}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunk: memoryview) -> int:
    view = chunk.cast("B") if chunk.format != "B" or chunk.ndim != 1 else chunk
    done = 0
    while done < len(view):
        n = os.write(fd, view[done:done + (1 << 30)])
        if n <= 0:  # pragma: no cover - a short write of zero bytes means the device is full
            raise OSError(errno.ENOSPC, "short write")
        done += n
    return done


def write_atomic(final_path: str, chunks: Iterable[bytes | memoryview], *, exclusive: bool = False) -> int:
    """Write ``chunks`` to ``final_path`` so that a reader (or a crash) sees the old state or the whole file.

    Returns the byte count. With ``exclusive`` an existing final file is an error (create-only).
    """
    directory = os.path.dirname(final_path)
    os.makedirs(directory, exist_ok=True)
    tmp = temp_name(final_path)
    written = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in chunks:
                written += _write_all(fd, memoryview(chunk))
            os.fsync(fd)
            if os.fstat(fd).st_size != written:  # pragma: no cover - defensive, as restic checks
                raise OSError(errno.EIO, f"wrote {written} bytes but file has {os.fstat(fd).st_size}")
        finally:
            os.close(fd)
        if exclusive:
            # link() fails if the target exists: an atomic create-only publish.
            os.link(tmp, final_path)
            os.unlink(tmp)
        else:
            os.replace(tmp, final_path)
        fsync_dir(directory)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, FileExistsError):
            raise
        if isinstance(exc, OSError):
            raise StorageError(_explain(exc, final_path)) from exc
        raise
    return written


def _explain(exc: OSError, path: str) -> str:
    if exc.errno == errno.ENOSPC:
        return (f"no space left on device while writing {path}; free space (try `ckpt prune` then "
                f"`ckpt gc`) and save again. Nothing already committed was changed.")
    if exc.errno in (errno.EFBIG, errno.EDQUOT):
        return (f"writing {path} hit a file-size limit or disk quota ({exc.strerror}); raise `ulimit -f` or the "
                f"quota, or free space, and save again. Nothing already committed was changed.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror}; check permissions of the store directory."
    return f"writing {path} failed: {exc}. Nothing already committed was changed."


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_owner_pid(name: str) -> int | None:
    """The pid encoded in a temp file name made by :func:`temp_name`, or None for other names."""
    if TMP_MARKER not in name:
        return None
    try:
        return int(name.rsplit(TMP_MARKER, 1)[1].split("-", 1)[0])
    except ValueError:
        return None
