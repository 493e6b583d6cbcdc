import struct

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.errors import CorruptCheckpointError
from ckpt.format import codec
from ckpt.format.tensors import byte_view


def weights(n: int, dtype=torch.bfloat16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(dtype)


def roundtrip(t: torch.Tensor, level: int = 1) -> bytes:
    view = byte_view(t)
    payload = codec.encode(view, t.element_size(), level)
    assert payload is not None
    out = torch.empty_like(t)
    codec.decode_into(payload, byte_view(out), t.element_size())
    assert bytes(byte_view(out)) == bytes(view)
    return bytes(payload)


@pytest.fixture
def small_chunks(monkeypatch):
    """Many chunks (and the thread pool) on small inputs."""
    monkeypatch.setattr(codec, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(codec, "_SAMPLE", 4 << 10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64,
                                   torch.complex64, torch.float8_e4m3fn])
def test_roundtrip_float_weights(dtype, small_chunks):
    t = weights(300_001 if dtype.itemsize < 8 else 100_003, torch.float32 if dtype.is_complex else dtype)
    if dtype.is_complex:
        t = torch.complex(t[:50_001], t[50_001:100_002])
    roundtrip(t)


@pytest.mark.parametrize("n", [1024, 100_000, 1_000_003])
def test_roundtrip_default_chunking(n):
    roundtrip(weights(n))


def test_roundtrip_integers_and_bool(small_chunks):
    roundtrip(torch.arange(200_000, dtype=torch.int64))
    roundtrip(torch.arange(200_000, dtype=torch.int64).to(torch.uint16))
    roundtrip(torch.rand(300_000) < 0.1)
    roundtrip(torch.zeros(100_000, dtype=torch.complex128))  # itemsize 16


def test_roundtrip_other_level():
    roundtrip(weights(200_000), level=3)


def test_compression_ratio_on_weight_like_data():
    n = 1 << 20
    bf16 = byte_view(weights(n))
    fp32 = byte_view(weights(n, torch.float32))
    assert bf16.nbytes / len(codec.encode(bf16, 2)) > 1.4
    assert fp32.nbytes / len(codec.encode(fp32, 4)) > 1.15


def test_incompressible_and_empty_give_none():
    rnd = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    assert codec.encode(memoryview(rnd), 1) is None
    assert codec.encode(memoryview(rnd), 4) is None
    assert codec.encode(memoryview(b""), 2) is None
    assert codec.encode(memoryview(b"\0" * 16), 2) is None  # header alone is larger


def test_mantissa_planes_are_stored_raw():
    t = weights(1 << 20)  # 2 MiB: a single chunk
    payload = codec.encode(byte_view(t), 2)
    lo, hi = struct.unpack_from("<2I", payload, 16)
    assert lo == 1 << 20  # raw: stored length == plane length
    assert hi < (1 << 20) // 2  # sign/exponent plane compresses > 2x


def test_incompressible_gives_up_early_with_many_chunks(small_chunks):
    rnd = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
    assert codec.encode(memoryview(rnd), 2) is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        codec.encode(memoryview(b"abc"), 2)
    with pytest.raises(ValueError):
        codec.encode(memoryview(b"ab"), 0)
    with pytest.raises(ValueError):
        codec.decode_into(b"", memoryview(bytearray(3)), 2)


def good_payload() -> tuple[bytes, int]:
    t = weights(50_000)
    return bytes(codec.encode(byte_view(t), 2)), t.numel() * 2


def decode(payload, size: int, itemsize: int = 2) -> None:
    codec.decode_into(payload, memoryview(bytearray(size)), itemsize)


def test_decode_rejects_structural_damage():
    payload, size = good_payload()
    cases = {
        "truncated": payload[:-1],
        "trailing": payload + b"\0",
        "no header": payload[:10],
        "magic": b"XXXX" + payload[4:],
        "reserved": payload[:5] + b"\1" + payload[6:],
        "chunk 0": payload[:8] + struct.pack("<Q", 0) + payload[16:],
        "chunk odd": payload[:8] + struct.pack("<Q", 3) + payload[16:],
        "tiny chunks": payload[:8] + struct.pack("<Q", 2) + payload[16:],
    }
    for name, bad in cases.items():
        with pytest.raises(CorruptCheckpointError):
            decode(bad, size)
    with pytest.raises(CorruptCheckpointError):
        decode(payload, size, itemsize=4)  # header says 2
    with pytest.raises(CorruptCheckpointError):
        decode(payload, size - 2)
    with pytest.raises(CorruptCheckpointError):
        decode(payload, size + 2)


def handmade(planes: list[bytes], m: int) -> bytes:
    """A one-chunk payload of itemsize len(planes) and m elements."""
    k = len(planes)
    head = struct.pack("<4sB3xQ", b"CKZ1", k, m * k) + struct.pack(f"<{k}I", *map(len, planes))
    return head + b"".join(planes)


def test_handmade_payload_decodes():
    m = 1000
    lo = bytes(range(256)) * 3 + bytes(232)
    hi = zstandard.ZstdCompressor().compress(b"\7" * m)
    out = bytearray(2 * m)
    codec.decode_into(handmade([lo, hi], m), memoryview(out), 2)
    assert bytes(out[0::2]) == lo and bytes(out[1::2]) == b"\7" * m


@pytest.mark.parametrize("frame", [
    zstandard.ZstdCompressor().compress(b"\7" * 1001),  # declares too much
    zstandard.ZstdCompressor().compress(b"\7" * 999),  # declares too little
    zstandard.ZstdCompressor(write_content_size=False).compress(b"\7" * 1000),
    zstandard.ZstdCompressor().compress(b"\7" * 500) * 2,  # two frames
    zstandard.ZstdCompressor().compress(b"\7" * 1000) + b"\0",  # trailing bytes in the frame
    zstandard.ZstdCompressor().compress(b"\7" * 1000)[:-2],  # truncated frame
    b"",  # empty frame
    b"\0" * 999,  # garbage, shorter than the plane
    b"\x28\xb5\x2f\xfd" + b"\xff" * 100,  # magic then garbage
])
def test_decode_rejects_bad_frames(frame):
    m = 1000
    with pytest.raises(CorruptCheckpointError):
        codec.decode_into(handmade([frame], m), memoryview(bytearray(m)), 1)


def test_decode_rejects_lying_frame_header():
    """A frame whose header declares the right size but whose content is larger."""
    m = 1000
    frame = bytearray(zstandard.ZstdCompressor().compress(b"\7" * 2000))
    assert frame[4] & 0xE0 == 0x60  # single segment, 2-byte content size field at [5:7]
    frame[5:7] = struct.pack("<H", m - 256)
    assert zstandard.frame_content_size(bytes(frame)) == m
    with pytest.raises(CorruptCheckpointError):
        codec.decode_into(handmade([bytes(frame)], m), memoryview(bytearray(m)), 1)


def test_decode_rejects_huge_declared_size_without_allocating():
    m = 1000
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))  # tiny frame, 64 MiB content
    with pytest.raises(CorruptCheckpointError):
        codec.decode_into(handmade([bomb], m), memoryview(bytearray(m)), 1)


def _fuzz_base() -> tuple[bytes, int]:
    old = codec.CHUNK_BYTES
    codec.CHUNK_BYTES = 2048  # several chunks, so errors also surface from pool workers
    try:
        t = weights(3000)
        return bytes(codec.encode(byte_view(t), 2)), t.numel() * 2
    finally:
        codec.CHUNK_BYTES = old


FUZZ_BASE = _fuzz_base()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_decode_fuzz_mutations_only_raise_corrupt(data):
    payload, size = FUZZ_BASE
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[pos:pos + data.draw(st.integers(1, 64))]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        decode(bytes(buf), size)
    except CorruptCheckpointError:
        pass

