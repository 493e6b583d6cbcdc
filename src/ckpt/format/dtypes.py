"""The dtypes ckpt stores, by canonical name, without importing torch.

Each row: canonical name (also the torch attribute name), safetensors code (``None``: stored as raw
``U8`` bytes because safetensors' torch integration cannot map it) and element size in bytes. The
order is part of format 2: a slot table records a dtype as an index into the list of names the
manifest's header carries, so adding rows at the end never changes old manifests.
"""

from __future__ import annotations

DTYPE_TABLE: tuple[tuple[str, str | None, int], ...] = (
    ("bool", "BOOL", 1),
    ("uint8", "U8", 1),
    ("int8", "I8", 1),
    ("int16", "I16", 2),
    ("int32", "I32", 4),
    ("int64", "I64", 8),
    ("uint16", "U16", 2),
    ("uint32", "U32", 4),
    ("uint64", "U64", 8),
    ("float16", "F16", 2),
    ("bfloat16", "BF16", 2),
    ("float32", "F32", 4),
    ("float64", "F64", 8),
    ("float8_e4m3fn", "F8_E4M3", 1),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ", 1),
    ("float8_e5m2", "F8_E5M2", 1),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ", 1),
    # safe_open reads F8_E8M0, but safetensors.torch's own table lacks it: keep raw.
    ("float8_e8m0fnu", None, 1),
    # F4 counts 4-bit values while torch counts packed pairs: shapes would disagree.
    ("float4_e2m1fn_x2", None, 1),
    ("complex32", None, 4),
    ("complex64", "C64", 8),
    ("complex128", None, 16),
)

ITEMSIZE: dict[str, int] = {name: size for name, _, size in DTYPE_TABLE}
NAMES: tuple[str, ...] = tuple(name for name, _, _ in DTYPE_TABLE)

#: Element size in bytes of every safetensors code ckpt writes (for the pack header parser).
ST_ITEMSIZE: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U16": 2, "U32": 4,
    "U64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "C64": 8,
}
