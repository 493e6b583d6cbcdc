"""What the commit protocol and every maintenance operation share: storage, its locks, the catalog, and a
small cache of immutable manifests. Torch-free (a manifest's skeleton is decoded on first use)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ckpt.catalog import Catalog
from ckpt.errors import MissingBlobError
from ckpt.format import manifest as mf


class Context:
    """What the protocol needs: storage, its locks, the catalog, and a cache of immutable manifests."""

    def __init__(self, storage: Any, catalog: Catalog, locks: Any, store_id: str, cache_size: int = 8) -> None:
        self.storage, self.catalog, self.locks, self.store_id = storage, catalog, locks, store_id
        self._manifests: OrderedDict[str, mf.Manifest] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def manifest(self, checkpoint_id: str, fmt: int | None = None, *, structure: bool = True) -> mf.Manifest:
        """A manifest, validated; with ``structure`` its skeleton too (unpickled once, then cached)."""
        with self._lock:
            m = self._manifests.get(checkpoint_id)
            if m is not None:
                self._manifests.move_to_end(checkpoint_id)
        if m is not None:
            if structure:
                m.check_structure()
            return m
        if fmt is None:
            fmt = self.catalog.committed_format(checkpoint_id)
        try:
            data = self.storage.read(mf.path_for(checkpoint_id, fmt or 2), mf.MAX_MANIFEST_BYTES)
        except MissingBlobError:  # not indexed yet, or upgraded (format 1 -> 2) since the index looked
            data = self.storage.read(mf.path_for(checkpoint_id, 1 if (fmt or 2) == 2 else 2), mf.MAX_MANIFEST_BYTES)
        m = mf.decode(data, expected_id=checkpoint_id)
        if structure:
            m.check_structure()
        self.remember(m)
        return m

    def remember(self, m: mf.Manifest) -> None:
        with self._lock:
            self._manifests[m.id] = m
            while len(self._manifests) > self._cache_size:
                self._manifests.popitem(last=False)

    def forget(self, checkpoint_id: str) -> None:
        with self._lock:
            self._manifests.pop(checkpoint_id, None)
