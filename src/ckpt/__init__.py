"""ckpt: checkpoint storage and versioning for PyTorch training.

    from ckpt import CheckpointStore
    store = CheckpointStore("checkpoints/")
    store.save("resnet-a", epoch, {"model": model.state_dict(), "optimizer": opt.state_dict()},
               {"val_acc": acc})
    state = store.load("best:val_acc")
"""

from ckpt.errors import (AmbiguousSelectorError, CheckpointNotFoundError, CkptError, CorruptCheckpointError,
                         DuplicateCheckpointError, IndexCorruptError, IndexMismatchError, InvalidArgumentError, KeyMismatchError,
                         MetricDirectionError,
                         LockLostError, MissingBlobError, ReadOnlyStoreError, SchemaVersionError, SelectorError,
                         StorageError, StoreBusyError, StoreNotFoundError, UnsafeMetadataError, UnsupportedTypeError)
from ckpt.records import CheckpointDiff, CheckpointInfo, LoadReport, RunInfo, VerifyReport

__version__ = "0.1.0"


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``CheckpointStore`` imports torch: load it on first use, so ``import ckpt.catalog`` (the CLI's read
    commands, a web view) stays fast and torch-free."""
    if name == "CheckpointStore":
        from ckpt.store import CheckpointStore
        return CheckpointStore
    raise AttributeError(f"module 'ckpt' has no attribute {name!r}")

__all__ = [
    "CheckpointStore", "CheckpointInfo", "CheckpointDiff", "LoadReport", "RunInfo", "VerifyReport",
    "CkptError", "AmbiguousSelectorError", "CheckpointNotFoundError", "CorruptCheckpointError",
    "DuplicateCheckpointError", "IndexCorruptError", "IndexMismatchError", "LockLostError", "StoreBusyError", "InvalidArgumentError", "KeyMismatchError", "MetricDirectionError",
    "MissingBlobError", "ReadOnlyStoreError", "SchemaVersionError", "SelectorError", "StorageError",
    "StoreNotFoundError", "UnsafeMetadataError", "UnsupportedTypeError", "__version__",
]
