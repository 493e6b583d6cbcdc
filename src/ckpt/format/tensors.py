"""Tensor dtypes, zero-copy byte views and content hashes.

The dtype table (``ckpt.format.dtypes``) lists every dtype ckpt stores, its canonical name (what the
manifest records) and its safetensors code. Dtypes that safetensors' torch
integration cannot map (complex32/128, float8_e8m0fnu, float4_e2m1fn_x2) are written
as raw ``U8`` bytes; the real dtype lives in our manifest. Names are only ever looked
up in the table, never resolved with ``getattr(torch, name)``.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence

import blake3
import numpy as np
import xxhash
import torch

from ckpt.errors import CorruptCheckpointError, UnsupportedTypeError
from ckpt.format.dtypes import DTYPE_TABLE, ST_ITEMSIZE  # noqa: F401  (re-exported)

# Built only from dtypes this torch actually has (older torch lacks some float8s).
_BY_NAME: dict[str, torch.dtype] = {}
_ST_CODE: dict[torch.dtype, str] = {}
_NAME: dict[torch.dtype, str] = {}
for _name, _code, _size in DTYPE_TABLE:
    _dt = getattr(torch, _name, None)
    if isinstance(_dt, torch.dtype):
        _BY_NAME[_name] = _dt
        _NAME[_dt] = _name
        _ST_CODE[_dt] = _code or "U8"
del _name, _code, _size, _dt

_NUMPY_NATIVE = frozenset(getattr(torch, n) for n in (
    "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "complex64",
    "complex128"))

_HASH_DOMAIN = b"ckpt-tensor-v1\0"
_HASH_MT_THRESHOLD = 1 << 20  # below ~1 MiB, spawning hash threads costs more than it saves


def supported_dtype_names() -> list[str]:
    """Canonical names of every dtype this build can store."""
    return list(_BY_NAME)


def dtype_name(dtype: torch.dtype) -> str:
    """Canonical manifest name of ``dtype`` ("float32", "bfloat16", ...)."""
    try:
        return _NAME[dtype]
    except (KeyError, TypeError):
        raise UnsupportedTypeError(
            f"dtype {dtype} is not supported by ckpt; convert the tensor to one of "
            f"{', '.join(_BY_NAME)} before saving") from None


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`; unknown names mean a corrupt manifest."""
    dt = _BY_NAME.get(name) if isinstance(name, str) else None
    if dt is None:
        raise CorruptCheckpointError(
            f"unknown tensor dtype {name!r} in stored data; the manifest is corrupt or was "
            "written by a newer ckpt/torch")
    return dt


def st_dtype(dtype: torch.dtype) -> str:
    """safetensors dtype code for ``dtype``; "U8" when it is stored as raw bytes."""
    try:
        return _ST_CODE[dtype]
    except (KeyError, TypeError):
        dtype_name(dtype)  # raises the explanatory UnsupportedTypeError
        raise


def check_supported(t: torch.Tensor, path: str = "") -> None:
    """Raise UnsupportedTypeError when ``t`` has no plain dense byte representation."""
    where = f" at {path!r}" if path else ""
    if not isinstance(t, torch.Tensor):
        raise UnsupportedTypeError(f"expected a torch.Tensor{where}, got {type(t).__name__}")
    if t.is_nested:
        raise UnsupportedTypeError(
            f"nested tensor{where} is not supported; store t.unbind() (a list of tensors) "
            "or t.to_padded_tensor(0) instead")
    if t.layout != torch.strided:
        raise UnsupportedTypeError(
            f"tensor{where} has sparse layout {t.layout}; call .to_dense() before saving, "
            "or save its indices()/values() (crow_indices()/col_indices() for CSR) separately")
    if t.is_quantized:
        raise UnsupportedTypeError(
            f"quantized tensor{where} is not supported; save t.dequantize(), or t.int_repr() "
            "together with its scale/zero_point")
    if t.device.type == "meta":
        raise UnsupportedTypeError(
            f"meta tensor{where} has no data; materialize it (e.g. module.to_empty(device='cpu') "
            "and load or initialize the weights) before saving")
    if type(t).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
        raise UnsupportedTypeError(
            f"tensor subclass {type(t).__name__}{where} wraps other tensors; save a plain tensor "
            "(e.g. DTensor.full_tensor() or to_local()) instead")
    if t.dtype not in _NAME:
        raise UnsupportedTypeError(
            f"tensor{where} has dtype {t.dtype}, which ckpt cannot store; convert it to one of "
            f"{', '.join(_BY_NAME)} (e.g. t.view(torch.uint8) for bit-packed data) before saving")


def contiguous_cpu(t: torch.Tensor) -> torch.Tensor:
    """Detached, CPU, contiguous, conj/neg bits resolved; copies only when needed."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous()


def byte_view(t: torch.Tensor) -> memoryview:
    """Writable flat uint8 memoryview over a contiguous CPU tensor's bytes (no copy).

    Works for 0-dim and zero-size tensors and every table dtype (bool, bf16, fp8, complex): dtypes
    numpy lacks are reinterpreted as uint8. Writing into the view (e.g. ``file.readinto``) fills the
    tensor in place.
    """
    if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or t.is_neg():
        raise ValueError("byte_view needs a contiguous CPU tensor; call contiguous_cpu() first")
    return raw_view(t)


def raw_view(t: torch.Tensor) -> memoryview:
    """:func:`byte_view` without the checks, for tensors known to be contiguous and on the CPU (about
    3 us a tensor, which matters at 10,000 tensors)."""
    if t.dtype in _NUMPY_NATIVE:
        try:
            return memoryview(t.numpy() if not t.requires_grad else t.detach().numpy()).cast("B")
        except (TypeError, RuntimeError, ValueError):
            pass
    return memoryview(t.detach().reshape(-1).view(torch.uint8).numpy())


def hash_prefix(dtype_name: str, shape: Sequence[int]) -> bytes:
    """What a tensor hash covers before the bytes: a domain tag, the dtype name and the shape."""
    return _hash_prefix(dtype_name, shape if type(shape) is tuple else tuple(shape))


@functools.lru_cache(maxsize=4096)  # a model has few distinct (dtype, shape) pairs; this is per tensor
def _hash_prefix(dtype_name: str, shape: tuple) -> bytes:
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in shape {dims}")
    return b"".join((_HASH_DOMAIN, dtype_name.encode("ascii"), b"\0", struct.pack(f"<Q{len(dims)}Q", len(dims), *dims)))


class TensorHasher:
    """The content hash and the checksum of a tensor fed in pieces, in order (one pass over the bytes)."""

    __slots__ = ("_h", "_x")

    def __init__(self, dtype_name: str, shape: Sequence[int], nbytes: int) -> None:
        threads = blake3.blake3.AUTO if nbytes >= _HASH_MT_THRESHOLD else 1
        self._h = blake3.blake3(hash_prefix(dtype_name, shape), max_threads=threads)
        self._x = xxhash.xxh3_128()

    def update(self, data: memoryview | bytes) -> None:
        self._h.update(data)
        self._x.update(data)

    def result(self) -> tuple[str, str]:
        """(blake3 content hash, xxh3 checksum)."""
        return self._h.hexdigest(), self._x.hexdigest()


def tensor_hash(dtype_name: str, shape: Sequence[int], data: memoryview | bytes) -> str:
    """64-hex blake3 over a domain-separated (dtype, shape) prefix, then the bytes.

    The prefix makes equal bytes with a different dtype or shape hash differently.
    """
    nbytes = len(data) if type(data) is bytes else memoryview(data).nbytes
    if nbytes < _HASH_MT_THRESHOLD:
        h = blake3.blake3(hash_prefix(dtype_name, shape))
    else:
        h = blake3.blake3(hash_prefix(dtype_name, shape), max_threads=blake3.blake3.AUTO)
    h.update(data)
    return h.hexdigest()


def checksum(data: memoryview | bytes) -> str:
    """32-hex xxh3-128 of the raw bytes: the fast check every read verifies (about 20 GB/s).

    Content identity (dedup) is the blake3 :func:`tensor_hash`; this one only has to catch damage.
    """
    return xxhash.xxh3_128_hexdigest(data)


def empty_tensor(dtype_name: str, shape: Sequence[int]) -> torch.Tensor:
    """CPU tensor to read stored bytes into (see :func:`byte_view`)."""
    return empty(shape, dtype_from_name(dtype_name))


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised CPU memory for ``shape`` and ``dtype``; every byte is then overwritten by a read.

    ``torch.empty`` unless a reproducible training run has turned on
    ``torch.use_deterministic_algorithms(True)``: then torch.empty fills every new tensor with NaN first
    (a pass over memory) and is not implemented at all for float4 and the other bit-packed dtypes, so
    NumPy's uninitialised bytes are viewed as the dtype instead (not a ``bytearray``: it zeroes its
    memory, 0.6 s a GiB here).
    """
    dims = tuple(int(d) for d in shape)
    if not _fills_uninitialized():
        return torch.empty(dims, dtype=dtype)
    n = math.prod(dims) * dtype.itemsize
    flat = torch.from_numpy(np.empty(n, dtype=np.uint8)) if n else torch.zeros(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(dims)


def _fills_uninitialized() -> bool:
    deterministic = getattr(torch.utils, "deterministic", None)
    return torch.are_deterministic_algorithms_enabled() and bool(
        getattr(deterministic, "fill_uninitialized_memory", True))

