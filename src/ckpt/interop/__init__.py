"""Standalone files in and out of a store: ``.pt`` and ``.safetensors``, for ``ckpt restore/export/import``.

Writing:
  * ``.pt``: the nested state via ``torch.save``, made loadable with ``torch.load(weights_only=True)``
    (numpy arrays become tensors, numpy scalars Python numbers, frozensets sets, slices tuples; each
    conversion is reported).
  * ``.safetensors``: every tensor under its key path joined with "." (``model.fc.weight``); the rest of
    the state as JSON in the metadata (``ckpt.tree``, which also records tuples, int keys, tied tensors
    and numpy arrays, so importing the file gives the exact state back), plus ``ckpt.checkpoint`` (run,
    epoch, metrics...) and ``format: pt``. Tied tensors are written under each of their names.
  * weights only (export): just the tensors, flat, for inference.

Reading never runs pickled code: ``.pt/.pth/.ckpt/.bin`` go through ``torch.load(weights_only=True)`` and
a file that needs anything else raises UnsafeMetadataError; safetensors are data by construction.
Files are written to a temporary name and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

from ckpt.interop.files import (Imported, OutputExistsError, Written, count_tensors, file_format, flat_name,
                                output_file, tensor_leaves)
from ckpt.interop.pt import read_pt, weights_only_compatible, write_pt, write_weights_pt
from ckpt.interop.st import INFO_KEY, SUBTREE_KEY, read_safetensors, safetensors_payload, write_safetensors
from ckpt.interop.tree import TREE_KEY

__all__ = [
    "Imported", "OutputExistsError", "Written", "count_tensors", "file_format", "flat_name", "output_file",
    "tensor_leaves", "read_pt", "weights_only_compatible", "write_pt", "write_weights_pt", "read_safetensors",
    "safetensors_payload", "write_safetensors", "read_file", "TREE_KEY", "INFO_KEY", "SUBTREE_KEY",
]


def read_file(path: str) -> Imported:
    """Any supported file, by suffix."""
    return read_safetensors(path) if file_format(path) == "safetensors" else read_pt(path)
