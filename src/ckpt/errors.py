"""Typed errors. Every message says what went wrong and what to do about it."""

from __future__ import annotations

import errno as _errno

_FULL = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG})
_NOT_WRITABLE = frozenset({_errno.EROFS, _errno.EACCES, _errno.EPERM})


class CkptError(Exception):
    """Base class of every error ckpt raises on purpose."""


class StoreNotFoundError(CkptError):
    """The store location does not exist or holds no ckpt store (read-only open)."""


class SelectorError(CkptError, LookupError):
    """A selector could not be parsed or resolved to a checkpoint."""


class CheckpointNotFoundError(SelectorError):
    """The selector is well formed but matches no committed checkpoint."""


class AmbiguousSelectorError(SelectorError):
    """An id prefix (or other selector) matches more than one checkpoint."""

    def __init__(self, message: str, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = list(candidates or [])


class MetricDirectionError(CkptError):
    """A metric's direction (higher or lower is better) is unknown."""


class InvalidArgumentError(CkptError, ValueError):
    """An argument has the wrong type or value (run name, epoch, metric value...)."""


class DuplicateCheckpointError(CkptError):
    """A checkpoint with the same (run, epoch, step) is already committed or being saved."""


class UnsupportedTypeError(CkptError, TypeError):
    """The state holds a value ckpt cannot store safely (sparse tensor, custom object...)."""


class UnsafeMetadataError(CkptError):
    """Stored metadata asked for a Python global outside the allowlist; it was not executed."""

    def __init__(self, message: str, global_name: str | None = None) -> None:
        super().__init__(message)
        self.global_name = global_name


class CorruptCheckpointError(CkptError):
    """Stored bytes do not match their hashes, or a manifest or pack is malformed."""


class MissingBlobError(CorruptCheckpointError):
    """A manifest or pack that a checkpoint needs is missing from storage."""


class SchemaVersionError(CkptError):
    """The index schema is newer than this library, or older and the store was opened read-only."""


class KeyMismatchError(CkptError, KeyError):
    """load_into found missing/unexpected keys (strict=True) or shapes that differ."""

    def __init__(self, message: str, missing: list[str] | None = None,
                 unexpected: list[str] | None = None, mismatched: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StorageError(CkptError, OSError):
    """Writing to or reading from the blob storage failed (disk full, permission, network)."""


class StorageFullError(StorageError):
    """No space left, or a quota or file-size limit hit (ENOSPC, EDQUOT, EFBIG, SQLITE_FULL)."""


class StorageNotWritableError(StorageError):
    """The storage refuses writes: a read-only file system or mount, or no permission (EROFS, EACCES, EPERM)."""


class IndexCorruptError(StorageError):
    """The index database file is damaged. It is only a cache: `ckpt reindex` rebuilds it from storage."""


class ReadOnlyStoreError(CkptError):
    """A write was attempted on a store opened read-only."""


class IndexMismatchError(CkptError):
    """The index belongs to another store (two stores pointed at one index database)."""


class StoreBusyError(CkptError):
    """A store lock could not be had within the timeout; the message names the holders and what to do."""

    def __init__(self, message: str, holders: list | None = None) -> None:
        super().__init__(message)
        self.holders = list(holders or [])


class LockLostError(StorageError):
    """Our store lock was removed (as stale) by someone else, or could not be refreshed in time."""


class InvalidFileError(CorruptCheckpointError, InvalidArgumentError):
    """A file given to ``import`` is damaged or malformed (its metadata, its pickle, its tensors).

    Both a CorruptCheckpointError (the data is bad: exit code 4) and an InvalidArgumentError
    (for callers that already catch that).
    """


def storage_error(exc: OSError, message: str) -> StorageError:
    """The StorageError subclass that ``exc``'s errno calls for (full, not writable, or plain), with
    ``message``; raise it ``from exc``. For the core's write paths (blobs, packs, index)."""
    code = getattr(exc, "errno", None)
    if code in _FULL:
        return StorageFullError(message)
    if code in _NOT_WRITABLE or isinstance(exc, PermissionError):
        return StorageNotWritableError(message)
    return StorageError(message)
