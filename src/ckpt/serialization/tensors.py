"""Tensor dtypes, zero-copy byte views and content hashes.

One table (``_DTYPES``) lists every dtype ckpt stores, its canonical name (what the
manifest records) and its safetensors code. Dtypes that safetensors' torch
integration cannot map (complex32/128, float8_e8m0fnu, float4_e2m1fn_x2) are written
as raw ``U8`` bytes; the real dtype lives in our manifest. Names are only ever looked
up in the table, never resolved with ``getattr(torch, name)``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import blake3
import xxhash
import torch

from ckpt.errors import CorruptCheckpointError, UnsupportedTypeError

# (canonical name, safetensors code or None when stored as raw U8).
# Names double as torch attribute names; only these are ever looked up.
_DTYPE_TABLE: tuple[tuple[str, str | None], ...] = (
    ("bool", "BOOL"),
    ("uint8", "U8"),
    ("int8", "I8"),
    ("int16", "I16"),
    ("int32", "I32"),
    ("int64", "I64"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("float16", "F16"),
    ("bfloat16", "BF16"),
    ("float32", "F32"),
    ("float64", "F64"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    # safe_open reads F8_E8M0, but safetensors.torch's own table lacks it: keep raw.
    ("float8_e8m0fnu", None),
    # F4 counts 4-bit values while torch counts packed pairs: shapes would disagree.
    ("float4_e2m1fn_x2", None),
    ("complex32", None),
    ("complex64", "C64"),
    ("complex128", None),
)

# Built only from dtypes this torch actually has (older torch lacks some float8s).
_BY_NAME: dict[str, torch.dtype] = {}
_ST_CODE: dict[torch.dtype, str] = {}
_NAME: dict[torch.dtype, str] = {}
for _name, _code in _DTYPE_TABLE:
    _dt = getattr(torch, _name, None)
    if isinstance(_dt, torch.dtype):
        _BY_NAME[_name] = _dt
        _NAME[_dt] = _name
        _ST_CODE[_dt] = _code or "U8"
del _name, _code, _dt

#: Element size in bytes of every safetensors code ckpt writes (for the header parser).
ST_ITEMSIZE: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U16": 2, "U32": 4,
    "U64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "C64": 8,
}

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

    Works for 0-dim and zero-size tensors and every table dtype (bool, bf16, fp8,
    complex): reinterpreting as uint8 sidesteps numpy's missing dtypes. Writing into
    the view (e.g. ``file.readinto``) fills the tensor in place.
    """
    if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or t.is_neg():
        raise ValueError("byte_view needs a contiguous CPU tensor; call contiguous_cpu() first")
    arr = t.detach().reshape(-1).view(torch.uint8).numpy()
    return memoryview(arr)


def tensor_hash(dtype_name: str, shape: Sequence[int], data: memoryview | bytes) -> str:
    """64-hex blake3 over a domain-separated (dtype, shape) prefix, then the bytes.

    The prefix makes equal bytes with a different dtype or shape hash differently.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in shape {dims}")
    name = dtype_name.encode("ascii")
    prefix = b"".join((_HASH_DOMAIN, name, b"\0", struct.pack(f"<Q{len(dims)}Q", len(dims), *dims)))
    nbytes = memoryview(data).nbytes
    threads = blake3.blake3.AUTO if nbytes >= _HASH_MT_THRESHOLD else 1
    h = blake3.blake3(prefix, max_threads=threads)
    h.update(data)
    return h.hexdigest()


def checksum(data: memoryview | bytes) -> str:
    """32-hex xxh3-128 of the raw bytes: the fast check every read verifies (about 20 GB/s).

    Content identity (dedup) is the blake3 :func:`tensor_hash`; this one only has to catch damage.
    """
    return xxhash.xxh3_128_hexdigest(data)


def empty_tensor(dtype_name: str, shape: Sequence[int]) -> torch.Tensor:
    """Uninitialized CPU tensor to read stored bytes into (see :func:`byte_view`)."""
    return torch.empty(tuple(int(d) for d in shape), dtype=dtype_from_name(dtype_name))

