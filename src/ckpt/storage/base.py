"""The storage protocol every backend implements, and the pieces the backends share.

Keys are relative POSIX paths that ckpt builds from hex ids and digests (``packs/<id>.safetensors``,
``manifests/<id>.ckpt``, ``locks/...``), never from user strings; :func:`check_key` still refuses
anything that could leave the store root, so a bug cannot turn into a write outside it.

Torch-free on purpose: the CLI's read commands, the catalog and the lock code use it.
"""

from __future__ import annotations

import os
import secrets
from typing import NamedTuple, Protocol, runtime_checkable

from ckpt.errors import CorruptCheckpointError, MissingBlobError

#: Marker in the names of temp files (``.NAME.tmp-PID-RAND``) so that gc can tell a dead writer's
#: leftovers from a live writer's work in progress.
TMP_MARKER = ".tmp-"


class Entry(NamedTuple):
    """One blob in a listing. ``mtime`` is POSIX seconds (None where the backend has none)."""

    name: str
    size: int
    mtime: float | None


@runtime_checkable
class Reader(Protocol):
    size: int
    positional: bool  # several threads may read_into at once

    def read_into(self, offset: int, out: memoryview) -> None: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Reader": ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Sink(Protocol):
    key: str
    reserve: int
    position: int

    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def commit(self, prefix: bytes = b"") -> int: ...
    def abort(self) -> None: ...


@runtime_checkable
class Storage(Protocol):
    url: str
    protocol: str
    is_local: bool
    is_object_store: bool

    def put(self, key: str, data: bytes | bytearray | memoryview, *, create_only: bool = False) -> int: ...
    def open_sink(self, key: str, *, reserve: int = 0) -> Sink: ...
    def reader(self, key: str) -> Reader: ...
    def read(self, key: str, max_size: int) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, directory: str) -> list[Entry]: ...
    def delete(self, key: str) -> bool: ...
    def touch(self, key: str) -> None: ...
    def makedirs(self, directory: str) -> None: ...
    def abort_stale_uploads(self, older_than_seconds: float, *, dry_run: bool = False) -> list[str]: ...


# ------------------------------------------------------------------------------------------ keys


def check_key(key: str) -> str:
    """``key`` if it is a safe relative POSIX path, else ValueError (a bug in ckpt, not user input)."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise ValueError(f"invalid storage key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def check_directory(directory: str) -> str:
    """A directory key without trailing slash; ``""`` is the store root."""
    directory = directory.rstrip("/")
    return check_key(directory) if directory else ""


def join_key(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def temp_name(name: str) -> str:
    """The temp name beside ``name`` (a base name): ``.NAME.tmp-PID-RAND``, naming the writing process."""
    return f".{name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


def temp_owner_pid(name: str) -> int | None:
    """The pid encoded in a temp name made by :func:`temp_name`, or None for other names."""
    if TMP_MARKER not in name:
        return None
    try:
        return int(name.rsplit(TMP_MARKER, 1)[1].split("-", 1)[0])
    except ValueError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (permission denied counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover - e.g. pid out of range
        return False
    return True


def as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of ``data`` (memoryviews of any format and shape are accepted)."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view.cast("B")


def missing(url: str, key: str) -> MissingBlobError:
    return MissingBlobError(f"blob {key} is missing from the store {url}; run `ckpt verify` to see what "
                            f"is affected")


# --------------------------------------------------------------------------------- shared bases


class BaseReader:
    """Bounds checks and the context-manager protocol; subclasses provide ``_read_into``."""

    size: int
    positional: bool = True

    def __init__(self, url: str, key: str, size: int) -> None:
        self._url = url
        self._key = key
        self.size = size
        self._closed = False

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MissingBlobError(f"blob {self._key} in {self._url} is truncated or the request is wrong: "
                                   f"bytes {offset}..{offset + length} asked for but it has {self.size}; "
                                   f"run `ckpt verify`")

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` exactly from ``offset``; MissingBlobError when the blob is shorter."""
        view = out if isinstance(out, memoryview) else memoryview(out)
        if view.readonly or not view.c_contiguous:
            raise ValueError("read_into needs a writable, contiguous buffer")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._check_range(offset, len(view))
        if self._closed:
            raise ValueError(f"reader of {self._key} is closed")
        if len(view):
            self._read_into(offset, view)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; the range is checked before anything is allocated."""
        self._check_range(offset, length)
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def _read_into(self, offset: int, out: memoryview) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "BaseReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BaseSink:
    """State and the context-manager protocol of a sink: leaving the block uncommitted aborts."""

    def __init__(self, key: str, reserve: int) -> None:
        if reserve < 0:
            raise ValueError(f"reserve must be >= 0, not {reserve}")
        self.key = key
        self.reserve = reserve
        self.position = reserve
        self.committed = False
        self.aborted = False

    def _check_open(self) -> None:
        if self.committed or self.aborted:
            raise ValueError(f"sink for {self.key} is already {'committed' if self.committed else 'aborted'}")

    def _check_prefix(self, prefix: bytes) -> None:
        if len(prefix) != self.reserve:
            raise ValueError(f"commit prefix is {len(prefix)} bytes but {self.reserve} were reserved")

    def commit(self, prefix: bytes = b"") -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> "BaseSink":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()


class BaseStorage:
    """Methods every backend derives the same way from its primitives."""

    url: str
    protocol: str
    is_local: bool = False
    is_object_store: bool = False

    def reader(self, key: str) -> BaseReader:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, key: str, max_size: int) -> bytes:
        """A whole small blob (manifest, ref); one larger than ``max_size`` is refused unread."""
        with self.reader(key) as r:
            self._check_max_size(key, r.size, max_size)
            return r.read(0, r.size)

    def _check_max_size(self, key: str, size: int, max_size: int) -> None:
        if size > max_size:
            raise CorruptCheckpointError(f"blob {key} in {self.url} is {size} bytes, more than the {max_size} allowed "
                               f"for it; it is not a valid ckpt file (run `ckpt verify`)")

    def abort_stale_uploads(self, older_than_seconds: float, *, dry_run: bool = False) -> list[str]:
        """Incomplete multipart uploads removed; only object stores have them."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
