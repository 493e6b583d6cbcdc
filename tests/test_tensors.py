import struct

import blake3
import numpy as np
import pytest
import safetensors.torch as st_torch
import torch

from ckpt.errors import CorruptCheckpointError, UnsupportedTypeError
from ckpt.format.tensors import (ST_ITEMSIZE, byte_view, check_supported, contiguous_cpu,
                                        dtype_from_name, dtype_name, empty_tensor, st_dtype,
                                        supported_dtype_names, tensor_hash)

ALL = [dtype_from_name(n) for n in supported_dtype_names()]


def sample(dtype: torch.dtype, shape=(3, 5)) -> torch.Tensor:
    """Arbitrary bit patterns of any dtype (many dtypes have no random op)."""
    n = int(np.prod(shape)) * dtype.itemsize
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8)
    if dtype == torch.bool:
        raw = raw & 1
    return raw.view(dtype).reshape(shape)


def test_table_covers_every_sensible_dtype():
    expected = {"bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
                "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
                "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                "float8_e8m0fnu", "float4_e2m1fn_x2"}
    assert expected <= set(supported_dtype_names())


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_name_roundtrip(dtype):
    name = dtype_name(dtype)
    assert name == str(dtype).removeprefix("torch.")
    assert dtype_from_name(name) is dtype


@pytest.mark.parametrize("name", ["", "float", "half", "Tensor", "__class__", "uint1", "qint8",
                                  "bits8", "float32 ", "torch.float32", None, 3, "F32"])
def test_unknown_names_are_corrupt(name):
    with pytest.raises(CorruptCheckpointError):
        dtype_from_name(name)


@pytest.mark.parametrize("dtype", [torch.uint1, torch.int4, torch.bits8, torch.quint8])
def test_unsupported_dtypes(dtype):
    with pytest.raises(UnsupportedTypeError):
        dtype_name(dtype)
    with pytest.raises(UnsupportedTypeError):
        st_dtype(dtype)


def test_st_dtype_agrees_with_safetensors_torch():
    to_code = {dt: code for code, dt in st_torch._TYPES.items() if dt is not None}
    for dt in ALL:
        code = st_dtype(dt)
        assert code == to_code.get(dt, "U8"), dt
        if code != "U8" or dt == torch.uint8:
            assert ST_ITEMSIZE[code] == dt.itemsize
    assert set(ST_ITEMSIZE) == {st_dtype(dt) for dt in ALL}


@pytest.mark.filterwarnings("ignore:ComplexHalf:UserWarning")
@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (7,), (3, 5)])
def test_byte_view_roundtrip(dtype, shape):
    t = sample(dtype, shape)
    view = byte_view(t)
    assert view.format == "B" and view.ndim == 1 and not view.readonly
    assert view.nbytes == t.numel() * dtype.itemsize
    out = empty_tensor(dtype_name(dtype), shape)
    assert out.dtype == dtype and tuple(out.shape) == shape
    byte_view(out)[:] = view  # what readinto does
    assert bytes(byte_view(out)) == bytes(view)
    assert torch.equal(out.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_byte_view_is_zero_copy_and_writable():
    t = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    view = byte_view(t)
    view[2:4] = b"\x80\x3f"  # bf16 1.0 at index 1
    assert t[1].item() == 1.0
    sub = torch.arange(10, dtype=torch.int32)[2:5]
    assert bytes(byte_view(sub)) == np.arange(2, 5, dtype=np.int32).tobytes()


def test_byte_view_rejects_non_contiguous():
    with pytest.raises(ValueError):
        byte_view(torch.zeros(3, 4).t())
    with pytest.raises(ValueError):
        byte_view(torch.zeros(2, dtype=torch.complex64).conj())


def test_contiguous_cpu_copies_only_when_needed():
    t = torch.randn(3, 4, requires_grad=True)
    c = contiguous_cpu(t)
    assert c.data_ptr() == t.data_ptr() and not c.requires_grad
    tt = contiguous_cpu(t.t())
    assert tt.is_contiguous() and torch.equal(tt, t.t())
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj()
    cz = contiguous_cpu(z)
    assert not cz.is_conj() and torch.equal(cz, torch.tensor([1 - 2j, 3 + 4j]))
    assert bytes(byte_view(cz)) == np.array([1 - 2j, 3 + 4j], dtype=np.complex64).tobytes()
    n = torch.tensor([1 + 2j], dtype=torch.complex64).conj().imag  # negative view
    assert contiguous_cpu(n).tolist() == [-2.0]


def test_check_supported_accepts_dense():
    for dt in ALL:
        check_supported(sample(dt), "w")
    check_supported(torch.nn.Parameter(torch.zeros(2)))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("make,hint", [
    (lambda: torch.zeros(3, 3).to_sparse(), "to_dense"),
    (lambda: torch.eye(3).to_sparse_csr(), "to_dense"),
    (lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.quint8), "dequantize"),
    (lambda: torch.empty(3, device="meta"), "materialize"),
    (lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]), "unbind"),
    (lambda: torch.empty(3, dtype=torch.uint1), "convert"),
])
def test_check_supported_rejects(make, hint):
    with pytest.raises(UnsupportedTypeError) as e:
        check_supported(make(), "model.layer.weight")
    assert "model.layer.weight" in str(e.value) and hint in str(e.value)


def test_check_supported_rejects_wrapper_subclass():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = torch.empty(3)
    with pytest.raises(UnsupportedTypeError):
        check_supported(fake, "x")


def test_tensor_hash_format_is_pinned():
    data = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    prefix = b"ckpt-tensor-v1\0float32\0" + struct.pack("<QQ", 1, 2)
    assert tensor_hash("float32", [2], data) == blake3.blake3(prefix + data).hexdigest()


def test_tensor_hash_separates_dtype_and_shape():
    data = bytes(range(24))
    hashes = {tensor_hash("float32", (6,), data), tensor_hash("int32", (6,), data),
              tensor_hash("float32", (2, 3), data), tensor_hash("float32", (3, 2), data),
              tensor_hash("uint8", (24,), data), tensor_hash("uint8", (1, 24), data)}
    assert len(hashes) == 6
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
    assert tensor_hash("float32", [], b"abcd") != tensor_hash("float32", [1], b"abcd")


def test_tensor_hash_large_input_multithreaded_matches():
    t = torch.arange(1 << 20, dtype=torch.int32)  # 4 MiB: takes the multithreaded path
    view = byte_view(t)
    expected = blake3.blake3(b"ckpt-tensor-v1\0int32\0" + struct.pack("<QQ", 1, 1 << 20) + bytes(view))
    assert tensor_hash("int32", t.shape, view) == expected.hexdigest()
    assert tensor_hash("int32", t.shape, bytes(view)) == expected.hexdigest()


def test_tensor_hash_rejects_negative_dims():
    with pytest.raises(ValueError):
        tensor_hash("uint8", [-1], b"")
