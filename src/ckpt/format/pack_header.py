"""Build and strictly parse safetensors headers.

Packs are plain safetensors files: ``u64 little-endian header length`` + a JSON
object padded with spaces to a multiple of 8 + the tensors' bytes back to back.
The parser treats every byte as hostile: sizes are checked before anything is
read or allocated, JSON nesting is bounded before parsing, and every entry must
describe a well-formed range; the ranges must tile the data area exactly (as the
safetensors library itself requires). Anything else is CorruptCheckpointError.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ckpt.errors import CorruptCheckpointError
from ckpt.format.dtypes import ST_ITEMSIZE

META_KEY = "__metadata__"
MAX_HEADER = 100 * 1024 * 1024
_SAFETENSORS_MAX_HEADER = 100_000_000  # what the safetensors library accepts
_MAX_DEPTH = 3  # {entry: {"shape": [..]}} is the deepest valid structure
_MAX_NDIM = 64
_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def build_header(entries: Sequence[tuple[str, str, Sequence[int], int]],
                 metadata: dict[str, str] | None, pad_to: int | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    """Header prefix for ``entries`` (name, st dtype, shape, nbytes) laid out in order.

    Returns the prefix (length + padded JSON) and each entry's absolute (begin, end)
    offset in the file ``prefix + data_0 + data_1 + ...``. ``pad_to`` pads the prefix with
    spaces to exactly that many bytes (a multiple of 8), so data can be written before the header.
    """
    parts: list[str] = []
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map str to str")
        parts.append(f'"{META_KEY}":' + json.dumps(dict(metadata), separators=(",", ":")))
    # The JSON is written directly (what json.dumps would give, byte for byte): a pack of 10,000 small
    # tensors would otherwise spend more time building its header than writing its bytes.
    names: set[str] = set()
    spans: list[tuple[int, int]] = []
    pos = 0
    for name, dtype, shape, nbytes in entries:
        dims = [int(d) for d in shape]
        if name == META_KEY or name in names:
            raise ValueError(f"duplicate or reserved tensor name {name!r}")
        names.add(name)
        if dtype not in ST_ITEMSIZE or any(d < 0 for d in dims):
            raise ValueError(f"bad dtype/shape {dtype} {dims} for {name!r}")
        if math.prod(dims) * ST_ITEMSIZE[dtype] != nbytes:
            raise ValueError(f"{name!r}: {nbytes} bytes do not fit {dtype}{dims}")
        key = f'"{name}"' if name.isalnum() and name.isascii() else json.dumps(name)
        parts.append(f'{key}:{{"dtype":"{dtype}","shape":[{",".join(map(str, dims))}],'
                     f'"data_offsets":[{pos},{pos + nbytes}]}}')
        spans.append((pos, pos + nbytes))
        pos += nbytes
    raw = ("{" + ",".join(parts) + "}").encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if pad_to is not None:
        if pad_to % 8 or pad_to - 8 < len(raw):
            raise ValueError(f"cannot pad a {len(raw) + 8}-byte header prefix to {pad_to} bytes")
        raw += b" " * (pad_to - 8 - len(raw))
    if len(raw) > _SAFETENSORS_MAX_HEADER:
        raise ValueError(f"safetensors header of {len(raw)} bytes is too large; split the pack")
    start = 8 + len(raw)
    offsets = [(start + begin, start + end) for begin, end in spans]
    return len(raw).to_bytes(8, "little") + raw, offsets


def _corrupt(why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"pack header is corrupt: {why}")


def _check_depth(raw: bytes) -> None:
    """Reject JSON nested deeper than _MAX_DEPTH before parsing it, in linear time.

    Escapes are dropped (left to right, as JSON reads them), string contents masked
    by quote parity, and only brackets kept; each ``replace`` pass then deletes the
    innermost level, so a well-formed document of depth <= D is empty after D passes.
    All steps run in C (bytes methods, numpy), even on 100 MB of hostile input.
    """
    text = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    in_string = np.cumsum(text == ord('"'), dtype=np.uint8) & 1  # parity survives wrap-around
    brackets = text[in_string == 0].tobytes().translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(_MAX_DEPTH):
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise _corrupt("JSON nesting is too deep or unbalanced")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _corrupt("duplicate JSON key")
    return d


def _reject_constant(name: str) -> Any:
    raise _corrupt(f"invalid JSON number {name}")


def _is_int(x: Any) -> bool:
    return type(x) is int  # bool is an int subclass but never a valid size


def parse_header(read: Callable[[int, int], bytes], file_size: int,
                 max_header: int = MAX_HEADER) -> tuple[dict, dict[str, str], int]:
    """Parse and validate a safetensors header through ``read(offset, length)``.

    Returns (entries, metadata, data_start): entries maps each name to
    {"dtype", "shape", "data_offsets": (begin, end)} with absolute file offsets.
    """
    if file_size < 8:
        raise _corrupt(f"file of {file_size} bytes is too small")
    head = read(0, 8)
    if len(head) != 8:
        raise _corrupt("short read of the header length")
    n = int.from_bytes(head, "little")
    if n > max_header or n > file_size - 8:
        raise _corrupt(f"declared header length {n} exceeds the limit or the file size {file_size}")
    raw = bytes(read(8, n))
    if len(raw) != n:
        raise _corrupt("short read of the header")
    if not raw.startswith(b"{"):
        raise _corrupt("header does not start with a JSON object")
    _check_depth(raw)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_reject_constant)
    except CorruptCheckpointError:
        raise
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError, huge ints
        raise _corrupt(f"invalid UTF-8/JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise _corrupt("header is not a JSON object")

    data_start = 8 + n
    metadata = doc.pop(META_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt("__metadata__ must map strings to strings")
    entries: dict[str, dict[str, Any]] = {}
    for name, info in doc.items():
        entries[name] = _parse_entry(name, info, data_start, file_size)
    ranges = sorted(e["data_offsets"] for e in entries.values())
    pos = data_start
    for begin, end in ranges:
        if begin < pos:
            raise _corrupt(f"tensor byte ranges overlap at offset {begin}")
        if begin > pos:
            raise _corrupt(f"gap in tensor data at offset {pos}")
        pos = end
    if pos != file_size:
        raise _corrupt(f"tensor data ends at {pos} but the file has {file_size} bytes")
    return entries, metadata, data_start


def _parse_entry(name: str, info: Any, data_start: int, file_size: int) -> dict[str, Any]:
    if not isinstance(info, dict) or info.keys() != _ENTRY_KEYS:
        raise _corrupt(f"entry {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ST_ITEMSIZE:
        raise _corrupt(f"entry {name!r} has unknown dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_int(d) and 0 <= d < 2**63 for d in shape)):
        raise _corrupt(f"entry {name!r} has an invalid shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise _corrupt(f"entry {name!r} has invalid data_offsets")
    begin, end = data_start + offsets[0], data_start + offsets[1]
    if not data_start <= begin <= end <= file_size:
        raise _corrupt(f"entry {name!r} has data_offsets {offsets} outside the file")
    if end - begin != math.prod(shape) * ST_ITEMSIZE[dtype]:
        raise _corrupt(f"entry {name!r}: {end - begin} bytes do not match {dtype}{shape}")
    return {"dtype": dtype, "shape": shape, "data_offsets": (begin, end)}
