"""ckpt: checkpoint storage and versioning for PyTorch training.

    from ckpt import CheckpointStore
    store = CheckpointStore("checkpoints/")
    store.save("resnet-a", epoch, {"model": model.state_dict(), "optimizer": opt.state_dict()},
               {"val_acc": acc})
    state = store.load("best:val_acc")
"""

from ckpt.errors import (AmbiguousSelectorError, CheckpointNotFoundError, CkptError, CorruptCheckpointError,
                         DuplicateCheckpointError, IndexCorruptError, InvalidArgumentError, KeyMismatchError,
                         MetricDirectionError,
                         MissingBlobError, ReadOnlyStoreError, SchemaVersionError, SelectorError, StorageError,
                         StoreNotFoundError, UnsafeMetadataError, UnsupportedTypeError)
from ckpt.records import CheckpointDiff, CheckpointInfo, LoadReport, RunInfo, VerifyReport
from ckpt.store import CheckpointStore

__version__ = "0.1.0"

__all__ = [
    "CheckpointStore", "CheckpointInfo", "CheckpointDiff", "LoadReport", "RunInfo", "VerifyReport",
    "CkptError", "AmbiguousSelectorError", "CheckpointNotFoundError", "CorruptCheckpointError",
    "DuplicateCheckpointError", "IndexCorruptError", "InvalidArgumentError", "KeyMismatchError", "MetricDirectionError",
    "MissingBlobError", "ReadOnlyStoreError", "SchemaVersionError", "SelectorError", "StorageError",
    "StoreNotFoundError", "UnsafeMetadataError", "UnsupportedTypeError", "__version__",
]
