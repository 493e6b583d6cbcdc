"""Blob storage: one protocol (:mod:`ckpt.storage.base`) with local, fsspec and S3 classes.

``open_storage(location)`` picks the class from the URL. Nothing here imports torch or numpy.
"""

from __future__ import annotations

import os

from ckpt.errors import StorageError
from ckpt.storage.base import (TMP_MARKER, Entry, Reader, Sink, Storage, pid_alive, temp_name,
                               temp_owner_pid)
from ckpt.storage.local import LocalStorage

S3_PROTOCOLS = ("s3", "s3a")


def open_storage(location: str | os.PathLike[str], storage_options: dict | None = None) -> Storage:
    """The storage for ``location``: a plain path or ``file://`` is local disk, ``s3://``/``s3a://``
    is S3 (through s3fs), anything else an fsspec filesystem (``memory://`` included)."""
    location = os.fspath(location)
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme in ("", "file", "local"):
        path = location.split("://", 1)[1] if scheme else location
        return LocalStorage(path)
    if scheme in S3_PROTOCOLS:
        try:
            import s3fs  # noqa: F401
        except ImportError as exc:
            raise StorageError(f"{location} needs s3fs: pip install 'ckpt[s3]'") from exc
        from ckpt.storage.s3 import S3Storage
        return S3Storage(location, storage_options)
    from ckpt.storage.fsspec_backend import FsspecStorage
    try:
        return FsspecStorage(location, storage_options)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {scheme}:// storage: {exc}; install the fsspec implementation "
                           f"for it (e.g. gcsfs, adlfs)") from exc


__all__ = ["Entry", "Reader", "Sink", "Storage", "LocalStorage", "open_storage", "TMP_MARKER", "temp_name",
           "temp_owner_pid", "pid_alive", "S3_PROTOCOLS"]
