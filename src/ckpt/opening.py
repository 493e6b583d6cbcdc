"""Opening a store: its storage and identity, the index that caches it, and bringing that index up to date.

A store is known by the id in its marker (``ckpt-store.json``; a format-1 marker without one is known
by the hash of its bytes). The index records the id of the store it belongs to: opening a store with
another store's index is refused, so dedup never reuses bytes from outside the store it writes to.
A read-only open writes nothing anywhere: the index is opened read-only (SQLite's read-only, or
immutable, mode) or, when there is none usable, rebuilt in memory from the manifests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import blake3

from ckpt.catalog import Catalog
from ckpt.errors import (IndexCorruptError, IndexMismatchError, InvalidArgumentError, MissingBlobError,
                         SchemaVersionError, StorageError, StoreNotFoundError)
from ckpt.storage import open_storage

log = logging.getLogger("ckpt")
MARKER = "ckpt-store.json"
STORE_FORMAT = 2
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_DIRS = ("packs", "manifests", "refs/tags", "refs/runs", "locks")


def normalize(location: str | os.PathLike[str]) -> str:
    location = os.fspath(location)
    if not isinstance(location, str) or not location:
        raise InvalidArgumentError(f"location must be a path or URL, got {location!r}")
    if "://" not in location:
        location = os.path.abspath(os.path.expanduser(location))
    return location


def has_store(location: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bool:
    return open_storage(normalize(location), storage_options).exists(MARKER)


def store_id_of(marker: bytes) -> str:
    try:
        doc = json.loads(marker)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str) and _HEX32.match(doc["id"]):
        return doc["id"]
    return blake3.blake3(marker).hexdigest()[:32]  # format-1 markers carry no id: their bytes are unique


@dataclass
class StoreFiles:
    storage: Any
    store_id: str
    default_index: str
    index_is_cache: bool  # a per-host cache of a remote store: other hosts write without it

    def bind(self, ctx: Any, *, readonly: bool) -> None:
        """Check the index belongs to this store, finish dead writers' work, bring the index up to date."""
        from ckpt import recovery, sync
        cat = ctx.catalog
        owner = cat.meta("store_id")
        if owner is not None and owner != self.store_id:
            raise IndexMismatchError(
                f"the index {cat.url} belongs to another store (id {owner[:12]}), not to {self.storage.url} "
                f"(id {self.store_id[:12]}); give each store its own index (--index / CKPT_INDEX, or unset them "
                f"to use the store's default index)")
        if owner is None and not cat.empty() and not _sample_here(ctx):
            raise IndexMismatchError(
                f"the index {cat.url} lists checkpoints none of which are in {self.storage.url}: it belongs to "
                f"another store; give each store its own index (--index / CKPT_INDEX)")
        if readonly:
            if getattr(cat, "in_memory", False):
                sync.sync(ctx, packs=False)
                sync.restore_refs(ctx)
            return
        if owner is None:
            cat.set_meta("store_id", self.store_id)
        recovery.recover(ctx)
        generation = ctx.locks.generation()
        if cat.empty():
            if sync.listing(ctx.storage):
                log.warning("index at %s is empty but the store has manifests: rebuilding it", cat.url)
                sync.sync(ctx, generation=generation)
                sync.restore_refs(ctx)
            elif cat.generation() < generation - 1:  # no lock held: see sync.record_generation
                cat.write(sync.record_generation, generation, locked=False, durable=False)
        elif self.index_is_cache or cat.generation() != generation:
            sync.sync(ctx, generation=generation)


def _sample_here(ctx: Any) -> bool:
    """Whether some of the index's newest checkpoints are in this store (an old index has no store id)."""
    from ckpt.format import manifest as mf
    for info in ctx.catalog.list(limit=None)[-3:]:
        if ctx.storage.exists(mf.path_for(info.id, info.format)):
            return True
    return False


def open_files(location: str | os.PathLike[str], storage_options: dict[str, Any] | None, *,
               readonly: bool) -> StoreFiles:
    storage = open_storage(normalize(location), storage_options)
    try:
        marker = storage.read(MARKER, 1 << 20)
    except MissingBlobError:
        if readonly:
            raise StoreNotFoundError(f"no ckpt store at {storage.url}; check --store / CKPT_STORE, or create one by "
                                     f"saving to it (CheckpointStore(path).save(...))") from None
        marker = _create(storage)
    return StoreFiles(storage, store_id_of(marker), *_default_index(storage))


def _create(storage: Any) -> bytes:
    for d in _DIRS:
        storage.makedirs(d)
    doc = {"ckpt_store": STORE_FORMAT, "id": uuid.uuid4().hex, "created_at": datetime.now(timezone.utc).isoformat()}
    try:
        storage.put(MARKER, json.dumps(doc).encode(), create_only=True)
    except FileExistsError:
        pass  # another process created the store at the same moment: use theirs
    return storage.read(MARKER, 1 << 20)


def _default_index(storage: Any) -> tuple[str, bool]:
    if storage.is_local:
        return f"sqlite:///{os.path.join(storage.root, 'index.sqlite')}", False
    if storage.protocol == "memory":
        return "sqlite://", False
    cache = Path(os.environ.get("CKPT_CACHE_DIR", Path.home() / ".cache" / "ckpt"))
    return f"sqlite:///{cache / (hashlib.sha256(storage.url.encode()).hexdigest()[:24] + '.sqlite')}", True


def open_catalog(files: StoreFiles, index: str | None, *, readonly: bool, rebuild: bool) -> Catalog:
    url = index or files.default_index
    if readonly:
        try:
            cat = Catalog(url, readonly=True)
            if not (cat.empty() and _has_manifests(files.storage)):
                return cat
            cat.close()
        except SchemaVersionError as exc:
            if getattr(exc, "newer", False):
                raise
        except IndexCorruptError:
            raise
        except StorageError:  # no index file, or one that cannot be opened read-only
            pass
        log.info("reading %s through an in-memory index rebuilt from its manifests", files.storage.url)
        cat = Catalog("sqlite://")
        cat.in_memory = True  # type: ignore[attr-defined]
        return cat
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return Catalog(url)
    except IndexCorruptError:
        if not (rebuild and index is None and url.startswith("sqlite:///")):
            raise
        _move_aside(url[len("sqlite:///"):])
        return Catalog(url)


def _has_manifests(storage: Any) -> bool:
    from ckpt import sync
    return bool(sync.listing(storage))


def _move_aside(path: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, f"{path}.damaged-{stamp}{suffix}")
    log.warning("moved the damaged index aside to %s.damaged-%s; rebuilding it from the manifests", path, stamp)
