"""Lazy access to one checkpoint: the manifest is read up front, each tensor only when asked for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ckpt.errors import InvalidArgumentError
from ckpt.reader import load_state
from ckpt.records import CheckpointInfo
from ckpt.format import manifest as mf
from ckpt.packs import read_slot


def _key(path: tuple) -> str:
    return "/".join(str(k) for k in path)


class LazyCheckpoint:
    """Tensors by key ("model/layer.weight" or a key-path tuple), read and checked on access (numpy
    arrays come back as tensors here).

    Use as a context manager (or call ``close()``) to release the open pack files.
    """

    def __init__(self, storage: Any, manifest: mf.Manifest, info: CheckpointInfo) -> None:
        self.info = info
        self.manifest = manifest
        self._storage = storage
        self._by_key = {_key(p): s for p, s in manifest.leaves}
        self._by_path = {p: s for p, s in manifest.leaves}
        self._readers: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return list(self._by_key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key or key in self._by_path

    def slot(self, key: str | tuple) -> mf.Slot:
        i = self._by_path.get(key) if isinstance(key, tuple) else self._by_key.get(key)
        if i is None:
            raise InvalidArgumentError(f"checkpoint {self.info.short_id} has no tensor {key!r}; "
                                       f"it has {list(self._by_key)[:10]}...")
        return self.manifest.slots[i]

    def tensor(self, key: str | tuple, *, verify: bool | str = True) -> torch.Tensor:
        s = self.slot(key)
        reader = self._readers.get(s.pack)
        if reader is None:
            reader = self._readers[s.pack] = self._storage.reader(mf.pack_path(s.pack))
        return read_slot(reader, s, verify=verify)

    __getitem__ = tensor

    def structure(self) -> Any:
        """The saved structure with placeholders (TensorSlot) where tensors go; reads no tensor data."""
        return self.manifest.structure()

    def load(self, key: Any = None) -> Any:
        """A whole sub-tree (or everything), like ``store.load(..., key=key)``."""
        return load_state(self._storage, self.manifest, key=key)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __enter__(self) -> "LazyCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LazyCheckpoint {self.info.short_id} {self.info.run}@{self.info.epoch}: {len(self)} tensors>"


__all__ = ["LazyCheckpoint"]
