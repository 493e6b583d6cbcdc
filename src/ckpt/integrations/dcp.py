"""torch.distributed.checkpoint (DCP) on a ckpt store: every rank writes its own shards, rank 0 commits once.

    from ckpt import CheckpointStore
    from ckpt.integrations import dcp as ckpt_dcp

    store = CheckpointStore("s3://bucket/ckpts", index="postgresql+psycopg://user@db/ckpt")  # on every rank
    info = ckpt_dcp.save(state_dict, store, run="llama-7b", epoch=3, step=12000, metrics={"loss": 1.7})
    ckpt_dcp.load(state_dict, store, "llama-7b:latest")  # any world size: DCP reshards

or with DCP's own entry points::

    torch.distributed.checkpoint.save(sd, storage_writer=CkptStorageWriter(store, "llama-7b", 3))
    torch.distributed.checkpoint.load(sd, storage_reader=CkptStorageReader(store, "llama-7b@3"))

How a save maps onto ckpt's commit protocol (docs/format.md):

* L, A (coordinator, ``prepare_global_plan``): the coordinator takes the store's shared lock and
  inserts the checkpoint row ``pending``, claiming (run, epoch, step) before any rank writes a byte;
  each rank is handed the checkpoint id in its plan.
* A' (every rank, ``write_data``): the rank checksums its shards and, in one index transaction, looks
  up which the store already holds (reused, not written again, once their content hash is confirmed)
  and claims the big new ones: one claimed by another rank of this save is left to that rank. So each
  big new tensor is written once, by one rank, even when ranks hold equal shards.
* B (every rank): the rank writes its claimed tensors as its own pack, create-only, and reports where
  every shard lives. When ``write_data`` returns, the rank's bytes are durable.
* C, D (coordinator, ``finish``): after DCP has gathered every rank's results, which only happens when
  every rank's write succeeded, the coordinator writes the manifest (the commit point) and indexes it.

A rank that dies before C means no manifest: the checkpoint is never listed. :func:`save` removes the
pending row and the coordinator's pack at once; with plain ``dcp.save`` the writer does it at its next
``reset`` (next save), and otherwise recovery drops the row on the next writable open (see
docs/deployment.md for the multi-host case) and gc removes the packs. The coordinator holds the store's
shared lock from planning to its manifest, so no gc can remove a rank's pack meanwhile.

The manifest is an ordinary ckpt manifest. Its skeleton describes DCP's metadata (for every key its
dtype, global size and chunks, each chunk a tensor slot), so ``store.load`` shows the raw chunks,
:func:`load_full` assembles whole tensors on one machine, and ``verify``, ``diff``, ``prune``, ``gc`` and
``reindex`` treat it like any other checkpoint. Non-tensor values (DCP pickles them with torch.save)
are stored as uint8 byte slots; ckpt itself never unpickles them, DCP's planner does at load.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import (LoadItemType, LoadPlan, LoadPlanner, SavePlan,
                                                  SavePlanner, WriteItemType)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from ckpt import commit, validation
from ckpt.errors import CkptError, InvalidArgumentError
from ckpt.format import manifest as mf
from ckpt.format.skeleton import TensorSlot, flatten
from ckpt.format.tensors import byte_view, check_supported, contiguous_cpu, dtype_name, empty
from ckpt.metrics import to_float
from ckpt.packs import read_slot
from ckpt.records import CheckpointInfo
from ckpt.snapshot import SlotData, Snapshot

__all__ = ["CkptStorageWriter", "CkptStorageReader", "save", "load", "load_full", "DCP_FORMAT"]

log = logging.getLogger("ckpt")
DCP_FORMAT = "torch.distributed.checkpoint"
_CHUNK = 500


# ----------------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Ticket:
    """What the coordinator hands each rank in its plan (pickled through DCP's scatter)."""

    checkpoint_id: str


@dataclass(frozen=True)
class _Stored:
    """What a rank reports about one write item (gathered to the coordinator by DCP)."""

    slot: mf.Slot | None  # where its bytes are; None: another rank of this save writes them (see key)
    key: tuple[str, str, tuple[int, ...]]  # (checksum, dtype, shape) of the bytes
    pack: str | None  # the rank's own pack, if it wrote one
    pack_size: int


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ------------------------------------------------------------------------------------- writer


class CkptStorageWriter(StorageWriter):
    """DCP StorageWriter that saves one ckpt checkpoint ``run@epoch`` (``step`` optional).

    Make one per rank, on a :class:`~ckpt.CheckpointStore` opened by that rank on the same storage and
    index (an index every rank can reach: PostgreSQL across hosts, SQLite on one host). After a
    successful save ``info`` is the committed :class:`~ckpt.CheckpointInfo` on the coordinator and
    ``checkpoint_id`` the id on every rank.
    """

    def __init__(self, store: Any, run: str, epoch: int, *, step: int | None = None,
                 metrics: dict[str, Any] | None = None, tags: Iterable[str] = (), parent: Any = None,
                 compress: bool | None = None, variant: str | None = None) -> None:
        super().__init__()
        self.store = store
        self._ctx = store.context  # raises ReadOnlyStoreError for a read-only store
        self.run = validation.run_name(run)
        self.epoch = validation.integer("epoch", epoch)
        self.step = validation.integer("step", step, allow_none=True)
        self.variant = validation.variant_name(variant)
        self.metrics = {name: to_float(name, v) for name, v in (metrics or {}).items()}
        self.tags = tuple(validation.tag_name(t) for t in ([tags] if isinstance(tags, str) else tags))
        self.parent = None if parent is None else (parent.id if isinstance(parent, CheckpointInfo)
                                                   else store.get(parent).id)
        self.default_parent = parent is None
        self.compress = store.compresses if compress is None else compress
        self.is_coordinator = False
        self.rank = 0
        self.checkpoint_id: str | None = None  # set on every rank once the plan arrives
        self.info: CheckpointInfo | None = None
        self._parts: commit.Parts | None = None  # the coordinator's claim and store lock
        self._pack: str | None = None

    # -- DCP protocol ---------------------------------------------------------------------------
    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        self.abort()  # a previous save through this writer that never finished
        self.checkpoint_id = None
        self.info = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.rank = int(kwargs.get("rank", _rank()))

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Coordinator, before any rank writes: claim (run, epoch, step) and take the store's shared lock."""
        self._parts = commit.begin_parts(self._ctx, run=self.run, epoch=self.epoch, step=self.step,
                                         variant=self.variant, parent=self.parent, default_parent=self.default_parent)
        return [dataclasses.replace(p, storage_data=_Ticket(self._parts.id)) for p in plans]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        ticket = plan.storage_data
        if not isinstance(ticket, _Ticket):
            raise CkptError("the save plan carries no ckpt ticket: CkptStorageWriter needs its own "
                            "prepare_global_plan to run (is plan caching enabled in the planner?)")
        self.checkpoint_id = ticket.checkpoint_id
        fut: Future = Future()
        fut.set_result(self._write(plan, planner, ticket))
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator, after every rank's writes returned: manifest (step C), then index (step D)."""
        if self._parts is None:
            raise CkptError("finish() without a claimed checkpoint (prepare_global_plan did not run here)")
        parts, packs = self._parts, [r.storage_data.pack for rank in results for r in rank if r.storage_data.pack]
        try:
            m = self._manifest(parts, metadata, [r for rank in results for r in rank], len(results))
        except BaseException:
            self._parts = None
            parts.abort(packs)
            raise
        self._parts = None
        parts.finish(m, self.tags)
        self.info = self.store.get(m.id)
        self.store.track_run(self.run)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False  # a store is chosen by passing the writer, never guessed from a path

    # -- failure --------------------------------------------------------------------------------
    def abort(self) -> None:
        """Undo a claimed save that did not reach its manifest: drop the pending row and this rank's pack.

        Safe to call on any rank and after success (no-op). Packs of other ranks that died become
        orphans that gc removes."""
        parts, self._parts = self._parts, None
        pack, self._pack = self._pack, None
        if parts is not None:
            parts.abort([pack] if pack else [])
            log.info("abandoned distributed save %s of %s@%s", parts.id[:12], self.run, self.epoch)
        elif pack is not None and self.checkpoint_id is not None:
            if not any(self.store.storage.exists(mf.path_for(self.checkpoint_id, f)) for f in (2, 1)):
                self.store.storage.delete(mf.pack_path(pack))

    # -- steps ----------------------------------------------------------------------------------
    def _write(self, plan: SavePlan, planner: SavePlanner, ticket: _Ticket) -> list[WriteResult]:
        slots = []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                raw = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data.read())
                t = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
                stable = True
            else:
                check_supported(data, item.index.fqn)
                t = contiguous_cpu(data)
                stable = t.data_ptr() != data.data_ptr() or data.device.type != "cpu"
            offset = tuple(item.index.offset) if item.index.offset is not None else None
            slots.append(SlotData(t, dtype_name(t.dtype), tuple(t.shape), "torch", (item.index.fqn, offset), stable))
        written = commit.write_part(self._ctx, ticket.checkpoint_id, Snapshot(b"", slots, []), compress=self.compress)
        self._pack = written.pack_id
        checks = [s.check if s is not None else written.deferred[i][0] for i, s in enumerate(written.slots)]
        return [WriteResult(index=item.index, size_in_bytes=sd.nbytes,
                            storage_data=_Stored(slot, (check, sd.dtype, sd.shape), written.pack_id,
                                                 written.pack_size))
                for item, sd, slot, check in zip(plan.items, slots, written.slots, checks)]

    def _manifest(self, parts: commit.Parts, metadata: Metadata, results: list[WriteResult],
                  world_size: int) -> mf.Manifest:
        by_index: dict[tuple, _Stored] = {}
        by_key: dict[tuple, mf.Slot] = {}
        pack_sizes: dict[str, int] = {}
        for r in results:
            st: _Stored = r.storage_data
            by_index[(r.index.fqn, tuple(r.index.offset) if r.index.offset is not None else None)] = st
            if st.slot is not None:
                by_key.setdefault(st.key, st.slot)
            if st.pack and st.pack_size:
                pack_sizes[st.pack] = st.pack_size
        placeholders: list[torch.Tensor] = []
        stored: list[mf.Slot] = []

        def slot_for(fqn: str, offset: tuple | None) -> torch.Tensor:
            st = by_index.get((fqn, offset))
            if st is None:
                raise CkptError(f"no rank reported writing {fqn!r} at {offset}; the save is incomplete")
            slot = st.slot or by_key.get(st.key)
            if slot is None:
                raise CkptError(f"{fqn!r} at {offset} was left to another rank, which stored other bytes (did the "
                                f"tensor change during the save?); nothing was committed")
            placeholders.append(torch.empty(1, dtype=torch.uint8))  # distinct storage: distinct slot
            stored.append(slot)
            return placeholders[-1]

        entries: dict[str, Any] = {}
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, TensorStorageMetadata):
                entries[fqn] = {"type": "tensor", "dtype": md.properties.dtype, "size": torch.Size(md.size),
                                "chunks": [{"offsets": torch.Size(c.offsets), "sizes": torch.Size(c.sizes),
                                            "data": slot_for(fqn, tuple(c.offsets))} for c in md.chunks]}
            elif isinstance(md, BytesStorageMetadata):
                entries[fqn] = {"type": "bytes", "data": slot_for(fqn, None)}
            else:  # pragma: no cover - DCP has no other kinds today
                raise InvalidArgumentError(f"unknown DCP storage metadata for {fqn!r}: {type(md).__name__}")
        doc: dict[str, Any] = {"format": DCP_FORMAT, "version": metadata.version, "state_dict_metadata": entries}
        try:
            flat = flatten({**doc, "planner_data": metadata.planner_data})
        except CkptError:
            log.warning("DCP planner_data of %s cannot be stored safely; saved without it", parts.id[:12])
            flat = flatten({**doc, "planner_data": None})
        order = {id(t): i for i, t in enumerate(placeholders)}
        slots = [stored[order[id(t)]] for t in flat.tensors]
        table = mf.SlotTable.build(slots)
        known = self.store.catalog.pack_sizes([p for p in table.packs if p not in pack_sizes])
        return mf.Manifest(
            id=parts.id, run=self.run, epoch=self.epoch, step=self.step, created_at=commit.now().isoformat(),
            parent=parts.parent, metrics=self.metrics, skeleton=flat.skeleton, table=table,
            content_hash=table.content_hash(flat.skeleton), logical_size=sum(s.nbytes for s in slots),
            new_bytes=sum(pack_sizes.values()), host=commit.HOST, pid=os.getpid(), variant=self.variant,
            extra={"writer": DCP_FORMAT, "world_size": world_size}, pack_sizes={**known, **pack_sizes})


# ------------------------------------------------------------------------------------- reader


def _read_dcp_structure(store: Any, checkpoint_id: str) -> tuple[mf.Manifest, dict]:
    m = store.manifest(checkpoint_id)
    structure = m.structure()
    if not (isinstance(structure, dict) and structure.get("format") == DCP_FORMAT):
        raise InvalidArgumentError(f"checkpoint {checkpoint_id[:12]} was not saved through torch.distributed."
                                   f"checkpoint; load it with store.load(...) instead")
    return m, structure


def _resolve_id(store: Any, selector: Any, run: str | None, process_group: Any) -> str:
    """The checkpoint id, resolved once on rank 0 and broadcast, so every rank reads the same one."""
    if isinstance(selector, CheckpointInfo):
        return selector.id
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1:
        box = [None]
        src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
        if dist.get_rank() == src:
            try:
                box[0] = store.get(selector, run=run).id
            except CkptError as exc:
                box[0] = exc
        dist.broadcast_object_list(box, src=src, group=process_group)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]  # type: ignore[return-value]
    return store.get(selector, run=run).id


class CkptStorageReader(StorageReader):
    """DCP StorageReader for one checkpoint of the store, named by any selector ("latest", "run@3", ...).

    Construct it on every rank (with a process group, the selector is resolved on rank 0 and broadcast,
    so all ranks read the same checkpoint even while others are being saved). Every byte is checked
    against its slot's checksum as it is read, then resharded by DCP's planner.
    """

    def __init__(self, store: Any, selector: Any = "latest", *, run: str | None = None, verify: bool = True,
                 process_group: Any = None) -> None:
        super().__init__()
        self.store = store
        self.verify = verify
        self.checkpoint_id = _resolve_id(store, selector, run, process_group)
        self._manifest: mf.Manifest | None = None
        self._storage: dict[MetadataIndex, int] = {}

    @property
    def info(self) -> CheckpointInfo:
        return self.store.get(self.checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id:
            self.checkpoint_id = self.store.get(str(checkpoint_id)).id
        self._manifest = None
        self._storage = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # DCP's fallback to per-rank metadata: we only have global
            raise FileNotFoundError("ckpt stores one global metadata per checkpoint")
        m, structure = _read_dcp_structure(self.store, self.checkpoint_id)
        self._manifest = m
        sdm: dict[str, Any] = {}
        storage: dict[MetadataIndex, int] = {}
        for fqn, e in structure["state_dict_metadata"].items():
            if e["type"] == "bytes":
                sdm[fqn] = BytesStorageMetadata()
                storage[MetadataIndex(fqn)] = _slot_of(e["data"])
                continue
            chunks = []
            for c in e["chunks"]:
                chunks.append(ChunkStorageMetadata(offsets=torch.Size(c["offsets"]), sizes=torch.Size(c["sizes"])))
                storage[MetadataIndex(fqn, c["offsets"])] = _slot_of(c["data"])
            sdm[fqn] = TensorStorageMetadata(properties=TensorProperties(dtype=e["dtype"]), size=torch.Size(e["size"]),
                                             chunks=chunks)
        self._storage = storage
        return Metadata(state_dict_metadata=sdm, planner_data=structure.get("planner_data"),
                        storage_data=storage, version=structure.get("version"))

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if metadata.storage_data is not None:
            self._storage = metadata.storage_data
        if self._manifest is None:
            self._manifest = _read_dcp_structure(self.store, self.checkpoint_id)[0]

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        from torch.distributed._shard._utils import narrow_tensor_by_index
        m = self._manifest
        assert m is not None, "read_metadata must run before read_data"
        by_slot: dict[int, list] = {}
        for req in plan.items:
            by_slot.setdefault(self._storage[req.storage_index], []).append(req)
        by_pack: dict[str, list[int]] = {}
        for i in by_slot:
            by_pack.setdefault(m.slots[i].pack, []).append(i)
        for pack, ids in by_pack.items():
            ids.sort(key=lambda i: m.slots[i].offset)
            with self.store.storage.reader(mf.pack_path(pack)) as reader:
                for i in ids:
                    tensor = read_slot(reader, m.slots[i], verify=self.verify)
                    for req in by_slot[i]:
                        if req.type == LoadItemType.BYTE_IO:
                            planner.load_bytes(req, io.BytesIO(byte_view(tensor).tobytes()))
                            continue
                        src = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
                        target = planner.resolve_tensor(req).detach()
                        if target.size() != src.size():
                            raise CkptError(f"{req.storage_index.fqn}: stored chunk {tuple(src.size())} does not "
                                            f"fit the requested {tuple(target.size())}")
                        target.copy_(src)
                        planner.commit_tensor(req, target)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False


def _slot_of(placeholder: Any) -> int:
    if not isinstance(placeholder, TensorSlot):
        raise InvalidArgumentError("malformed DCP entry in the checkpoint skeleton")
    return placeholder.slot


# ----------------------------------------------------------------------------------- helpers


def save(state_dict: dict[str, Any], store: Any, run: str, epoch: int, *, step: int | None = None,
         metrics: dict[str, Any] | None = None, tags: Iterable[str] = (), parent: Any = None,
         planner: SavePlanner | None = None, process_group: Any = None) -> CheckpointInfo:
    """``dcp.save`` into the store, on every rank; returns the committed checkpoint on every rank.

    If any rank fails the coordinator removes the pending checkpoint and the packs at once.
    """
    import torch.distributed.checkpoint as dcp
    writer = CkptStorageWriter(store, run, epoch, step=step, metrics=metrics, tags=tags, parent=parent)
    try:
        dcp.save(state_dict, storage_writer=writer, planner=planner, process_group=process_group)
    except BaseException as exc:
        writer.abort()
        typed = _ckpt_error(exc)
        if typed is not None:
            raise typed from exc
        raise
    if writer.checkpoint_id is None:  # pragma: no cover - a rank with nothing to write still gets its plan
        raise CkptError("the distributed save finished without a checkpoint id")
    return writer.info or store.get(writer.checkpoint_id)


def load(state_dict: dict[str, Any], store: Any, selector: Any = "latest", *, run: str | None = None,
         planner: LoadPlanner | None = None, process_group: Any = None, verify: bool = True) -> CheckpointInfo:
    """``dcp.load`` from the store into ``state_dict`` (in place, resharded to this world); every rank."""
    import torch.distributed.checkpoint as dcp
    reader = CkptStorageReader(store, selector, run=run, verify=verify, process_group=process_group)
    try:
        dcp.load(state_dict, storage_reader=reader, planner=planner, process_group=process_group)
    except BaseException as exc:
        typed = _ckpt_error(exc)
        if typed is not None:
            raise typed from exc
        raise
    return reader.info


def _ckpt_error(exc: BaseException) -> CkptError | None:
    """The ckpt error inside DCP's CheckpointException, when every failing rank raised one of one class.

    DCP gathers each rank's failure into a CheckpointException, a BaseException that ``except
    Exception`` (and ``except CkptError``) misses; callers of :func:`save`/:func:`load` get the typed
    error they would get from the store itself (DuplicateCheckpointError, CheckpointNotFoundError...).
    """
    failures = getattr(exc, "failures", None)
    if not isinstance(failures, dict) or not failures:
        return None
    errors = [f[0] for f in failures.values() if isinstance(f, tuple) and f]
    if errors and len(errors) == len(failures) and all(isinstance(e, CkptError) for e in errors) \
            and len({type(e) for e in errors}) == 1:
        return errors[0]
    return None


def load_full(store: Any, selector: Any = "latest", *, run: str | None = None,
              verify: bool = True) -> dict[str, torch.Tensor | bytes]:
    """A distributed checkpoint as whole tensors, in one process (no process group needed).

    Returns ``{fully qualified name: tensor}``; non-tensor entries come back as the ``bytes`` DCP
    wrote (a torch.save pickle: unpickle only what you trust).
    """
    info = store.get(selector, run=run)
    m, structure = _read_dcp_structure(store, info.id)
    out: dict[str, torch.Tensor | bytes] = {}
    wanted: dict[int, list] = {}
    for fqn, e in structure["state_dict_metadata"].items():
        if e["type"] == "bytes":
            wanted.setdefault(_slot_of(e["data"]), []).append((fqn, None, None))
        else:
            out[fqn] = empty(e["size"], e["dtype"])
            for c in e["chunks"]:
                wanted.setdefault(_slot_of(c["data"]), []).append((fqn, c["offsets"], c["sizes"]))
    by_pack: dict[str, list[int]] = {}
    for i in wanted:
        by_pack.setdefault(m.slots[i].pack, []).append(i)
    for pack, ids in by_pack.items():
        ids.sort(key=lambda i: m.slots[i].offset)
        with store.storage.reader(mf.pack_path(pack)) as reader:
            for i in ids:
                t = read_slot(reader, m.slots[i], verify=verify)
                for fqn, offsets, sizes in wanted[i]:
                    if offsets is None:
                        out[fqn] = byte_view(t).tobytes()
                        continue
                    dest = out[fqn]
                    for d, (o, n) in enumerate(zip(offsets, sizes)):
                        dest = dest.narrow(d, o, n)
                    dest.copy_(t.view(tuple(sizes)))
    return out
