"""Lossless tensor compression: ZipNN-style byte grouping + zstd, per chunk and plane.

Why: in float weights the byte holding sign+exponent has ~3 bits of entropy while the
mantissa bytes are close to random. Splitting every element into byte *planes*
(byte 0 of all elements, then byte 1, ...) lets zstd's Huffman stage squeeze the
exponent plane (~2.9x) while the mantissa planes are stored raw, which is both
better and much faster than compressing the interleaved bytes.

The zstd parameters are tuned for that: min_match=7 and a tiny hash table make
zstd skip almost all (useless) match finding and spend its time in the Huffman
literal coder, ~2.5x faster than level 1 and closer to the plane's entropy.
``level > 1`` uses plain zstd levels instead.

The input is cut into chunks (``chunk_bytes``, 4 MiB by default) so that both
directions run on all cores (zstd and numpy release the GIL) with bounded
temporary memory.

Payload layout (integers little-endian)::

    0   4  magic b"CKZ1"
    4   1  itemsize k (1..16): number of byte planes per chunk
    5   3  zero
    8   8  chunk_bytes c (u64, > 0, multiple of k)
    16  4*k*n  table: u32 stored length of each (chunk, plane), chunk-major,
               n = ceil(total / c), total = the decoded size (known to the caller)
    ... the stored planes in table order, back to back, nothing after them.

A chunk of m elements has k planes of m bytes each: plane p holds byte p of every
element. A stored plane is raw iff its stored length equals m; otherwise it is
exactly one zstd frame declaring content size m, and its stored length is < m.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import zstandard

from ckpt.errors import CorruptCheckpointError
from ckpt.pools import LazyPool

MAGIC = b"CKZ1"
_HEAD = struct.Struct("<4sB3xQ")
CHUNK_BYTES = 4 << 20
MIN_SAVING = 0.03  # below 3% saved, storing raw is better (no decode cost)
_SAMPLE = 64 << 10  # bytes of each plane trial-compressed to spot incompressible planes
_MAX_ITEMSIZE = 16

_local = threading.local()


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_executor = LazyPool(_workers, "ckpt-codec")


def _cctx(level: int) -> zstandard.ZstdCompressor:
    """Per-thread compressor (contexts are not thread-safe)."""
    cache = _local.__dict__.setdefault("cctx", {})
    ctx = cache.get(level)
    if ctx is None:
        if level <= 1:
            params = zstandard.ZstdCompressionParameters(
                window_log=17, hash_log=6, chain_log=6, search_log=1, min_match=7,
                target_length=0, strategy=zstandard.STRATEGY_FAST,
                write_content_size=True, write_checksum=False)
            ctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            ctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cache[level] = ctx
    return ctx


def _dctx() -> zstandard.ZstdDecompressor:
    ctx = getattr(_local, "dctx", None)
    if ctx is None:
        ctx = _local.dctx = zstandard.ZstdDecompressor()
    return ctx


def _run_ordered(fn: Callable[[int], Any], count: int) -> Iterator[Any]:
    """Yield fn(0..count-1) in order, computed on the pool with a bounded look-ahead."""
    if count <= 1 or _workers() == 1:
        yield from (fn(i) for i in range(count))
        return
    pool, ahead = _executor(), 2 * _workers()
    pending: deque[Future] = deque()
    nxt = 0
    try:
        while nxt < count or pending:
            while nxt < count and len(pending) < ahead:
                pending.append(pool.submit(fn, nxt))
                nxt += 1
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        for f in pending:  # do not leave workers writing into buffers we hand back
            if not f.cancelled():
                f.exception()


def _compress_plane(rows: np.ndarray, p: int, level: int) -> bytes | None:
    """zstd frame of byte plane ``p`` of ``rows`` (m x k), or None to store it raw."""
    cctx = _cctx(level)
    m = rows.shape[0]
    if m > 4 * _SAMPLE:  # cheap trial on a slice: skip hopeless (mantissa) planes
        sample = np.ascontiguousarray(rows[:_SAMPLE, p])
        if len(cctx.compress(sample)) > _SAMPLE * (1 - MIN_SAVING):
            return None
    plane = rows[:, p]
    if not plane.flags.c_contiguous:  # byte grouping into a reused per-thread buffer
        buf = getattr(_local, "plane_buf", None)
        if buf is None or buf.nbytes < m:
            buf = _local.plane_buf = np.empty(max(m, CHUNK_BYTES // 2), dtype=np.uint8)
        plane = buf[:m]
        np.copyto(plane, rows[:, p])
    frame = cctx.compress(plane)
    return frame if len(frame) < m * (1 - MIN_SAVING) else None


def encode(data: memoryview, itemsize: int, level: int = 1) -> bytes | bytearray | None:
    """Compress ``data`` (elements of ``itemsize`` bytes); None if it saves < 3%.

    ``level <= 1`` selects the tuned Huffman-oriented parameters, higher values the
    standard zstd levels (slower, and not better on float weights).

    Two passes over chunks, both parallel: first compress the planes worth it
    (keeping only their frames), then, with every offset known, write frames and
    raw planes straight into the output (one strided copy per raw byte).
    The result is a ``bytearray`` (bytes-like): converting it to ``bytes`` would be
    one more full-size copy.
    """
    src = np.frombuffer(data, dtype=np.uint8)
    total = src.nbytes
    k = itemsize
    if not 1 <= k <= _MAX_ITEMSIZE or total % k:
        raise ValueError(f"bad itemsize {k} for {total} bytes")
    chunk = max(k, CHUNK_BYTES // k * k)
    nchunks = -(-total // chunk)
    table_end = _HEAD.size + 4 * k * nchunks
    limit = total * (1 - MIN_SAVING)
    if total == 0 or table_end >= limit:
        return None

    def rows(c: int) -> np.ndarray:
        return src[c * chunk:(c + 1) * chunk].reshape(-1, k)

    def compress_chunk(c: int) -> list[bytes | None]:
        r = rows(c)
        return [_compress_plane(r, p, level) for p in range(k)]

    frames: list[list[bytes | None]] = []
    lengths: list[int] = []
    size = table_end
    pending = _run_ordered(compress_chunk, nchunks)
    for c, chunk_frames in enumerate(pending):
        m = rows(c).shape[0]
        frames.append(chunk_frames)
        lengths += [m if f is None else len(f) for f in chunk_frames]
        size += sum(lengths[-k:])
        if size >= limit:  # can only grow: give up early
            pending.close()
            return None

    out = bytearray(size)
    _HEAD.pack_into(out, 0, MAGIC, k, chunk)
    struct.pack_into(f"<{len(lengths)}I", out, _HEAD.size, *lengths)
    dst = np.frombuffer(out, dtype=np.uint8)
    starts = np.cumsum([table_end] + lengths).tolist()

    def fill_chunk(c: int) -> None:
        r = rows(c)
        for p, f in enumerate(frames[c]):
            at = starts[c * k + p]
            if f is None:
                np.copyto(dst[at:at + r.shape[0]], r[:, p])
            else:
                dst[at:at + len(f)] = np.frombuffer(f, dtype=np.uint8)

    for _ in _run_ordered(fill_chunk, nchunks):
        pass
    return out


def _frame_ok(frame: memoryview, m: int) -> None:
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise CorruptCheckpointError(f"compressed tensor data: bad zstd frame header ({e})") from None
    if size != m:
        raise CorruptCheckpointError(
            f"compressed tensor data: zstd frame declares {size} bytes, expected {m}")


def decode_into(payload: bytes | memoryview, out: memoryview, itemsize: int) -> None:
    """Decompress an :func:`encode` payload into ``out`` (exactly its size), strictly.

    Every length and frame size is checked against ``len(out)`` before any
    decompression, so hostile input can neither overflow nor allocate more than a
    chunk per worker; any mismatch raises CorruptCheckpointError.
    """
    dst = np.frombuffer(out, dtype=np.uint8)
    total = dst.nbytes
    if not 1 <= itemsize <= _MAX_ITEMSIZE or total % itemsize:
        raise ValueError(f"bad itemsize {itemsize} for {total} bytes")
    src = memoryview(payload).cast("B")
    if len(src) < _HEAD.size:
        raise CorruptCheckpointError("compressed tensor data is truncated (no header)")
    magic, k, chunk = _HEAD.unpack_from(src)
    if magic != MAGIC or bytes(src[5:8]) != b"\0\0\0":
        raise CorruptCheckpointError("compressed tensor data has an unknown format")
    if k != itemsize or chunk <= 0 or chunk % k:
        raise CorruptCheckpointError(
            f"compressed tensor data: itemsize {k}/chunk {chunk} do not fit itemsize {itemsize}")
    nchunks = -(-total // chunk)
    table_end = _HEAD.size + 4 * k * nchunks
    if table_end > len(src):
        raise CorruptCheckpointError("compressed tensor data is truncated (table)")
    lengths = struct.unpack_from(f"<{k * nchunks}I", src, _HEAD.size)

    # Validate the whole layout up front: (src offset, plane size, raw?) per plane.
    jobs: list[list[tuple[int, int, bool]]] = []
    pos = table_end
    for c in range(nchunks):
        m = (min(total, (c + 1) * chunk) - c * chunk) // k
        planes = []
        for n in lengths[c * k:(c + 1) * k]:
            if n > m or pos + n > len(src):
                raise CorruptCheckpointError("compressed tensor data: plane length out of range")
            if n < m:
                _frame_ok(src[pos:pos + n], m)
            planes.append((pos, n, n == m))
            pos += n
        jobs.append(planes)
    if pos != len(src):
        raise CorruptCheckpointError(
            f"compressed tensor data: {len(src) - pos} unexpected trailing bytes")

    def work(c: int) -> None:
        part = dst[c * chunk:(c + 1) * chunk]
        rows = part.reshape(-1, k)
        for p, (at, n, raw) in enumerate(jobs[c]):
            frame = src[at:at + n]
            if raw:
                plane = np.frombuffer(frame, dtype=np.uint8)
            else:
                try:
                    data = _dctx().decompress(frame, max_output_size=rows.shape[0],
                                              allow_extra_data=False)
                except zstandard.ZstdError as e:
                    raise CorruptCheckpointError(f"compressed tensor data: {e}") from None
                if len(data) != rows.shape[0]:
                    raise CorruptCheckpointError("compressed tensor data: wrong decompressed size")
                plane = np.frombuffer(data, dtype=np.uint8)
            if k == 1:
                part[:] = plane
            else:
                rows[:, p] = plane  # undo the byte grouping

    for _ in _run_ordered(work, nchunks):
        pass
