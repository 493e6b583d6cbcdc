"""The save pipeline: decide what a snapshot must write, and write it, hashing exactly what is written.

1. Every slot gets an xxh3 checksum of its bytes (about 30 GB/s). A slot whose checksum, dtype and shape
   equal one of the parent checkpoint's slots is unchanged: it reuses that slot's hash and location.
2. The rest are looked up by checksum in the index (one transaction, which also claims the big new
   ones so that concurrent savers of the same bytes write them once). A store hit is confirmed by
   recomputing the blake3 content hash from memory before it is reused.
3. New tensors are streamed into the pack. Bytes the caller may still change (a blocking save reads
   live tensors) are copied chunk by chunk into a scratch buffer first, and the hash, the checksum and
   the write all use that copy: the stored bytes always match their hash and checksum, even when
   another thread changes the tensor meanwhile (that tensor is then stored as it was when copied, and
   a warning says so). Hashing runs on a pool thread, overlapped with the writes.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ckpt.catalog.writes import Begun, Stored
from ckpt.errors import StorageError
from ckpt.format import codec
from ckpt.pools import LazyPool
from ckpt.format.dtypes import ITEMSIZE
from ckpt.format.manifest import Manifest, Slot
from ckpt.format.tensors import TensorHasher, checksum, tensor_hash
from ckpt.packs import MIN_COMPRESS, PackWriter
from ckpt.snapshot import SlotData, Snapshot

log = logging.getLogger("ckpt")

CHUNK = 4 << 20  # bytes copied, hashed and written at a time
_SMALL = 1 << 20  # up to this a tensor is copied and hashed in one go, on the calling thread (no handoff)
#: Tensors smaller than this are never claimed: a duplicate small copy costs less than coordinating.
CLAIM_MIN = int(os.environ.get("CKPT_CLAIM_MIN_BYTES", 1 << 20))
#: How long a saver waits for another save in flight to finish writing a tensor both need.
CLAIM_WAIT_S = float(os.environ.get("CKPT_CLAIM_WAIT_SECONDS", 600))

# One hashing thread, reused by every save (updates stay in submission order).
_hash_pool = LazyPool(lambda: 1, "ckpt-hash")

Key = tuple[str, str, tuple[int, ...]]  # (checksum, dtype, shape)


@dataclass
class Plan:
    """What a snapshot needs, decided before the index is asked (step 1)."""

    checks: list[str]
    reuse: dict[int, Slot] = field(default_factory=dict)  # slot -> the parent's slot with the same bytes
    groups: dict[Key, list[int]] = field(default_factory=dict)  # the other slots, by content

    def lookups(self) -> list[str]:
        return sorted({k[0] for k in self.groups})

    def claimable(self, snap: Snapshot, minimum: int = CLAIM_MIN) -> list[str]:
        return sorted({k[0] for k, ids in self.groups.items() if snap.slots[ids[0]].nbytes >= minimum})


@dataclass
class Written:
    slots: list[Slot]
    pack_size: int
    pack_id: str | None
    mutated: list[str] = field(default_factory=list)
    deferred: dict[int, Key] = field(default_factory=dict)  # slots another process of this save writes


def plan(snap: Snapshot, parent: Manifest | None) -> Plan:
    checks = [checksum(s.data) for s in snap.slots]
    p = Plan(checks)
    previous: dict[Key, Slot] = {}
    if parent is not None:
        for s in parent.slots:
            previous.setdefault((s.check, s.dtype, s.shape), s)
    for i, (s, c) in enumerate(zip(snap.slots, checks)):
        key = (c, s.dtype, s.shape)
        old = previous.get(key)
        if old is not None and old.nbytes == s.nbytes:
            p.reuse[i] = old
        else:
            p.groups.setdefault(key, []).append(i)
    return p


def _stored_slot(st: Stored, kind: str) -> Slot:
    return Slot(st.hash, st.dtype, st.shape, st.nbytes, st.pack, st.offset, st.length, st.codec, st.check, kind)


class _Streamer:
    """Copies, hashes and writes tensors into one pack, the hashing on the pool thread."""

    def __init__(self, pack: PackWriter, compress: bool) -> None:
        self.pack, self.compress = pack, compress
        self._scratch: list[np.ndarray] = []
        self._whole: np.ndarray | None = None

    def _buffers(self) -> list[np.ndarray]:
        if not self._scratch:
            self._scratch = [np.empty(CHUNK, dtype=np.uint8) for _ in range(3)]
        return self._scratch

    def write(self, s: SlotData) -> tuple[str, str, int, int, str]:
        """Store one tensor; returns (hash, checksum, offset, length, codec) of the bytes written."""
        data = s.data
        n = len(data)
        stable = s.stable
        hasher = TensorHasher(s.dtype, s.shape, n)
        if self.compress and n >= MIN_COMPRESS:
            if not stable:  # the codec needs the whole tensor at once: copy it first
                if self._whole is None or len(self._whole) < n:
                    self._whole = np.empty(n, dtype=np.uint8)
                buf = self._whole[:n]
                np.copyto(buf, np.frombuffer(data, dtype=np.uint8))
                data = memoryview(buf)
            hasher.update(data)
            payload = codec.encode(data, ITEMSIZE[s.dtype])
            self.pack.begin()
            self.pack.write(payload if payload is not None else data)
            h, c = hasher.result()
            loc = self.pack.end(h, s.dtype, s.shape, "zstd" if payload is not None else "raw")
            return h, c, loc.offset, loc.length, loc.codec
        self.pack.begin()
        if n <= _SMALL:
            chunk = data if stable else bytes(data)
            hasher.update(chunk)
            self.pack.write(chunk)
        else:
            pool, pending = _hash_pool(), deque()
            bufs = self._buffers() if not stable else []
            src = np.frombuffer(data, dtype=np.uint8)
            for k, a in enumerate(range(0, n, CHUNK)):
                b = min(a + CHUNK, n)
                if len(pending) == 3:
                    pending.popleft().result()  # its buffer is free again
                if stable:
                    piece = data[a:b]
                else:
                    buf = bufs[k % 3][:b - a]
                    np.copyto(buf, src[a:b])
                    piece = memoryview(buf)
                pending.append(pool.submit(hasher.update, piece))
                self.pack.write(piece)
            for f in pending:
                f.result()
        h, c = hasher.result()
        loc = self.pack.end(h, s.dtype, s.shape, "raw")
        return h, c, loc.offset, loc.length, loc.codec


def write(storage: object, snap: Snapshot, p: Plan, begun: Begun, *, compress: bool,
          claim_more: Callable[[list[str]], tuple[set[str], dict[str, str], set[str]]],
          lookup: Callable[[list[str]], dict[str, list[Stored]]]) -> Written:
    """Steps 2-3: reuse what the store holds, write the rest into a new pack, wait for tensors other
    saves in flight are writing. Returns the slot of every snapshot slot."""
    slots: list[Slot | None] = [None] * len(snap.slots)
    for i, old in p.reuse.items():
        s = snap.slots[i]
        slots[i] = Slot(old.hash, old.dtype, old.shape, old.nbytes, old.pack, old.offset, old.length, old.codec,
                        old.check, s.kind)
    todo: list[Key] = []
    for key, ids in p.groups.items():
        hit = _confirm(snap, ids[0], begun.known.get(key[0], ()), key)
        if hit is not None:
            for i in ids:
                slots[i] = _stored_slot(hit, snap.slots[i].kind)
        else:
            todo.append(key)
    deferred = {i: k for k in todo if k[0] in begun.siblings for i in p.groups[k]}
    todo = [k for k in todo if k[0] not in begun.siblings]
    waiting = [k for k in todo if k[0] in begun.others]
    mine = [k for k in todo if k[0] not in begun.others]
    pack_id = uuid.uuid4().hex
    pack = PackWriter(storage, pack_id, [(k[2], snap.slots[i].nbytes) for k in todo for i in p.groups[k]])
    mutated: list[str] = []
    try:
        streamer = _Streamer(pack, compress)

        def store(key: Key) -> None:
            s = snap.slots[p.groups[key][0]]
            h, c, off, length, codec_name = streamer.write(s)
            stored(key, Slot(h, s.dtype, s.shape, s.nbytes, pack_id, off, length, codec_name, c, s.kind))

        def store_batch(keys: list[Key]) -> None:
            """Small tensors in one copy and one write; each is then checksummed and hashed from that
            copy, so what is hashed is what was written even if the caller changes a tensor meanwhile."""
            firsts = [p.groups[k][0] for k in keys]
            blob = b"".join([snap.slots[i].data for i in firsts])
            start = pack.position
            pack.write(blob)
            view = memoryview(blob)
            at = 0
            done: list[tuple[Key, Slot]] = []
            for key, i in zip(keys, firsts):
                s = snap.slots[i]
                n = s.nbytes
                piece = view[at:at + n]
                h = tensor_hash(s.dtype, s.shape, piece)
                loc = pack.record(h, s.dtype, s.shape, start + at, n)
                done.append((key, Slot(h, s.dtype, s.shape, n, pack_id, loc.offset, loc.length, loc.codec,
                                       checksum(piece), s.kind)))
                at += n
            # Only now: stored() may write more (a mutated group's other members), and pack entries must
            # be recorded in file order.
            for key, slot in done:
                stored(key, slot)

        def stored(key: Key, slot: Slot) -> None:
            ids = p.groups[key]
            c = slot.check
            if c != key[0]:  # the tensor changed after its checksum was taken: it is stored as copied
                mutated.append("/".join(map(str, snap.slots[ids[0]].path)) or "<root>")
                slots[ids[0]] = slot
                for i in ids[1:]:  # the others had the checksum's bytes, not these: store them too
                    other = snap.slots[i]
                    h2, c2, off2, len2, codec2 = streamer.write(other)
                    slots[i] = Slot(h2, other.dtype, other.shape, other.nbytes, pack_id, off2, len2, codec2, c2,
                                    other.kind)
                return
            for i in ids:
                kind = snap.slots[i].kind
                slots[i] = slot if kind == slot.kind else slot._replace(kind=kind)

        batchable = [k for k in mine if _batchable(snap.slots[p.groups[k][0]].nbytes, compress)]
        for batch in _batches(batchable, snap, p):
            store_batch(batch)
        for key in mine:
            if not _batchable(snap.slots[p.groups[key][0]].nbytes, compress):
                store(key)
        if waiting:
            _wait_for_others(snap, p, waiting, slots, store, claim_more, lookup)
        if pack.empty:
            pack.abort()
            size = 0
        else:
            size = pack.finish()
    except BaseException:
        pack.abort()
        raise
    if mutated:
        log.warning("%d tensor(s) changed while they were being saved (%s); the checkpoint holds each as it "
                    "was when copied. Save from a snapshot (blocking=False copies first) or pause the "
                    "writer thread.", len(mutated), ", ".join(mutated[:5]))
    if sum(s is None for s in slots) != len(deferred):  # pragma: no cover - a bug guard
        raise StorageError(f"internal error: {sum(s is None for s in slots)} tensor(s) were neither stored "
                           f"nor reused; nothing was committed")
    return Written(slots, size, pack_id if size else None, mutated, deferred)  # type: ignore[arg-type]


_BATCH_TENSOR = 64 << 10  # tensors up to this size are copied, written and hashed in batches
_BATCH_BYTES = 8 << 20


def _batchable(nbytes: int, compress: bool) -> bool:
    return nbytes <= _BATCH_TENSOR and not (compress and nbytes >= MIN_COMPRESS)


def _batches(keys: list[Key], snap: Snapshot, p: Plan) -> list[list[Key]]:
    out: list[list[Key]] = [[]]
    size = 0
    for key in keys:
        n = snap.slots[p.groups[key][0]].nbytes
        if out[-1] and size + n > _BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(key)
        size += n
    return out if out[0] else []


def _confirm(snap: Snapshot, i: int, candidates, key: Key) -> Stored | None:  # type: ignore[no-untyped-def]
    """A stored tensor with the same checksum, dtype and shape whose blake3 hash the bytes in memory
    really have (checksums are not collision-resistant; content hashes are)."""
    matches = [c for c in candidates if c.dtype == key[1] and tuple(c.shape) == key[2]]
    if not matches:
        return None
    s = snap.slots[i]
    h = tensor_hash(s.dtype, s.shape, s.data)
    return next((c for c in matches if c.hash == h), None)


def _wait_for_others(snap, p, waiting, slots, store, claim_more, lookup) -> None:  # type: ignore[no-untyped-def]
    """Wait for the saves in flight that claimed tensors this one needs, and reuse what they store.

    A tensor whose claimer died, failed or stored other bytes is claimed and written here. A save only
    waits on saves that claimed before it did (claims are taken in one transaction), so two savers
    never wait for each other. A claim is gone once its save commits, so a claim taken over here is
    followed by one more look-up: the claimer may have committed the tensor just before."""
    left = list(waiting)
    deadline = time.monotonic() + CLAIM_WAIT_S
    delay = 0.02

    def reuse(keys: list[Key]) -> list[Key]:
        found = lookup([k[0] for k in keys])
        rest = []
        for key in keys:
            hit = _confirm(snap, p.groups[key][0], found.get(key[0], ()), key)
            if hit is not None:
                for i in p.groups[key]:
                    slots[i] = _stored_slot(hit, snap.slots[i].kind)
            else:
                rest.append(key)
        return rest

    while left:
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
        rest = reuse(left)
        if not rest:
            return
        _mine, others, _siblings = claim_more([k[0] for k in rest])
        left = [k for k in rest if k[0] in others and time.monotonic() < deadline]
        taken = [k for k in rest if k not in left]
        for key in reuse(taken) if taken else ():
            store(key)
