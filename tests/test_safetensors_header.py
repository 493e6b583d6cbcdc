import json
import struct

import pytest
import safetensors.torch as st_torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from ckpt.errors import CorruptCheckpointError
from ckpt.format.pack_header import build_header, parse_header
from ckpt.format.tensors import byte_view, dtype_from_name, st_dtype, supported_dtype_names

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def file_reader(blob: bytes, calls: list | None = None):
    def read(offset: int, length: int) -> bytes:
        if calls is not None:
            calls.append((offset, length))
        return blob[offset:offset + length]
    return read


def parse(blob: bytes, **kw):
    return parse_header(file_reader(blob), len(blob), **kw)


def write_pack(tensors: dict[str, torch.Tensor], metadata=None) -> tuple[bytes, list[tuple[int, int]]]:
    entries, datas = [], []
    for name, t in tensors.items():
        view = byte_view(t.contiguous())
        code = st_dtype(t.dtype)
        shape = list(t.shape) if code != "U8" or t.dtype == torch.uint8 else [view.nbytes]
        entries.append((name, code, shape, view.nbytes))
        datas.append(bytes(view))
    prefix, offsets = build_header(entries, metadata)
    return prefix + b"".join(datas), offsets


def sample_tensors() -> dict[str, torch.Tensor]:
    out = {}
    for name in supported_dtype_names():
        dt = dtype_from_name(name)
        raw = torch.randint(0, 2 if dt == torch.bool else 256, (6 * dt.itemsize,), dtype=torch.uint8)
        out[name] = raw.view(dt).reshape(2, 3)
    out["zero-size"] = torch.empty(0, 4)
    out["0-dim"] = torch.tensor(3.5)
    out["0-dim-bf16"] = torch.tensor(-1.25, dtype=torch.bfloat16)
    out["empty-int"] = torch.empty(3, 0, dtype=torch.int64)
    return out


@pytest.mark.filterwarnings("ignore:ComplexHalf:UserWarning")
def test_build_is_read_by_safetensors(tmp_path):
    tensors = sample_tensors()
    blob, offsets = write_pack(tensors, {"format": "ckpt-pack-1", "note": "ünïcode"})
    assert int.from_bytes(blob[:8], "little") % 8 == 0
    path = tmp_path / "p.safetensors"
    path.write_bytes(blob)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "ckpt-pack-1", "note": "ünïcode"}
        assert set(f.keys()) == set(tensors)
        for (name, t), (begin, end) in zip(tensors.items(), offsets):
            got = f.get_tensor(name)
            assert blob[begin:end] == bytes(byte_view(t.contiguous()))
            if st_dtype(t.dtype) != "U8" or t.dtype == torch.uint8:
                assert got.dtype == t.dtype and got.shape == t.shape
                assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
            else:  # stored as raw bytes; the manifest restores the real dtype
                assert got.dtype == torch.uint8 and bytes(got.numpy()) == blob[begin:end]
    loaded = st_torch.load(blob)
    assert set(loaded) == set(tensors)


def test_build_without_metadata_and_without_entries(tmp_path):
    blob, offsets = write_pack({})
    assert offsets == [] and parse(blob) == ({}, {}, len(blob))
    blob, _ = write_pack({"a": torch.ones(2)}, None)
    path = tmp_path / "p.safetensors"
    path.write_bytes(blob)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() is None and torch.equal(f.get_tensor("a"), torch.ones(2))


def test_parse_our_own_output():
    tensors = {"w": torch.randn(3, 4), "b": torch.zeros(0), "s": torch.tensor(7, dtype=torch.int64)}
    blob, offsets = write_pack(tensors, {"k": "v"})
    entries, meta, start = parse(blob)
    assert meta == {"k": "v"}
    assert start == 8 + int.from_bytes(blob[:8], "little")
    assert list(entries) == ["w", "b", "s"]
    for (name, t), off in zip(tensors.items(), offsets):
        assert entries[name] == {"dtype": st_dtype(t.dtype), "shape": list(t.shape), "data_offsets": off}


def test_parse_file_written_by_safetensors():
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(4, dtype=torch.int16), "c": torch.zeros(0)}
    blob = st_torch.save(tensors, {"x": "y"})
    entries, meta, start = parse(blob)
    assert meta == {"x": "y"}
    for name, t in tensors.items():
        begin, end = entries[name]["data_offsets"]
        assert blob[begin:end] == bytes(byte_view(t))


def test_build_rejects_bad_entries():
    for entries in ([("a", "F32", [2], 7)], [("a", "XX", [1], 1)], [("a", "U8", [-1], 0)],
                    [("a", "U8", [1], 1), ("a", "U8", [1], 1)], [("__metadata__", "U8", [1], 1)]):
        with pytest.raises(ValueError):
            build_header(entries, None)
    with pytest.raises(ValueError):
        build_header([], {"a": 1})


# -- hostile headers ---------------------------------------------------------------------------

def raw_file(header, data: bytes = b"", declared: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if declared is None else declared) + body + data


def entry(dtype="U8", shape=(4,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


GOOD = {"a": entry(), "b": entry("F32", [1], [4, 8])}


def test_good_baseline_parses():
    entries, _, _ = parse(raw_file(GOOD, bytes(8)))
    assert set(entries) == {"a", "b"}


@pytest.mark.parametrize("blob", [
    b"", b"\0" * 7,  # no room for the length
    raw_file(GOOD, bytes(8), declared=10**6),  # header larger than the file
    raw_file(GOOD, bytes(8), declared=2**64 - 1),
    raw_file(b""),  # empty header
    raw_file(b"[]"), raw_file(b"\"x\""), raw_file(b"  {}"),  # not an object / not starting with {
    raw_file(b"{\xff}"),  # invalid UTF-8
    raw_file(b'{"a":'),  # truncated JSON
    raw_file(b'{"a": 1} x'),  # trailing garbage
    raw_file(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),  # deep nesting
    raw_file(b'{"__metadata__": {"a": {"b": {}}}}'),
    raw_file(b'{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 0]}}'),
    raw_file(b'{"a": {"dtype": "U8", "shape": [1e400], "data_offsets": [0, 1]}}', b"x"),
    raw_file(b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 1]}}', b"x"),
    raw_file(b'{"a": 1, "a": 2}'),  # duplicate keys
    raw_file({"a": entry(offsets=(0, 4)), "__metadata__": {"k": 1}}, bytes(4)),
    raw_file({"a": entry(offsets=(0, 4)), "__metadata__": ["k"]}, bytes(4)),
    raw_file({"a": entry("F33")}, bytes(4)),  # unknown dtype
    raw_file({"a": entry(shape=(-4,))}, bytes(4)),
    raw_file({"a": entry(shape=(2**70,))}, bytes(4)),
    raw_file({"a": entry(shape=(2**40, 2**40))}, bytes(4)),
    raw_file({"a": entry(shape=(4.0,))}, bytes(4)),
    raw_file({"a": entry(shape=(True, 4))}, bytes(4)),
    raw_file({"a": entry(shape=("4",))}, bytes(4)),
    raw_file({"a": entry(shape=[1] * 65, offsets=(0, 1))}, bytes(1)),
    raw_file({"a": {"dtype": "U8", "shape": 4, "data_offsets": [0, 4]}}, bytes(4)),
    raw_file({"a": entry(offsets=(4, 0))}, bytes(4)),  # begin > end
    raw_file({"a": entry(offsets=(0, 8), shape=(8,))}, bytes(4)),  # beyond the file
    raw_file({"a": entry(offsets=(-4, 0))}, bytes(4)),
    raw_file({"a": entry(offsets=(0, 4.0))}, bytes(4)),
    raw_file({"a": entry(offsets=(0, 4, 8))}, bytes(4)),
    raw_file({"a": entry(offsets=(0, 3))}, bytes(4)),  # length != prod(shape) * itemsize
    raw_file({"a": entry(), "b": entry()}, bytes(4)),  # overlap (identical)
    raw_file({"a": entry(), "b": entry(offsets=(2, 6))}, bytes(6)),  # overlap (partial)
    raw_file({"a": entry(shape=(0,), offsets=(2, 2)), "b": entry()}, bytes(4)),  # empty inside another
    raw_file({"a": entry(offsets=(4, 8))}, bytes(8)),  # gap before
    raw_file({"a": entry()}, bytes(5)),  # trailing bytes after the data
    raw_file({"a": {"dtype": "U8", "shape": [4]}}, bytes(4)),  # missing key
    raw_file({"a": {**entry(), "extra": 1}}, bytes(4)),
    raw_file({"a": [1, 2]}),
])
def test_hostile_headers_are_corrupt(blob):
    with pytest.raises(CorruptCheckpointError):
        parse(blob)


def test_oversized_header_is_refused_before_reading_it():
    calls: list = []
    blob = raw_file(GOOD, bytes(8), declared=200 * 1024 * 1024)
    with pytest.raises(CorruptCheckpointError):
        parse_header(file_reader(blob, calls), 300 * 1024 * 1024)  # file "large enough"
    assert calls == [(0, 8)]
    calls.clear()
    small = raw_file(GOOD, bytes(8))
    with pytest.raises(CorruptCheckpointError):
        parse_header(file_reader(small, calls), len(small), max_header=16)
    assert calls == [(0, 8)]


def test_short_reads_are_corrupt():
    blob = raw_file(GOOD, bytes(8))
    with pytest.raises(CorruptCheckpointError):
        parse_header(file_reader(blob), len(blob) + 100)  # claims more bytes than exist
    with pytest.raises(CorruptCheckpointError):
        parse_header(lambda o, n: b"", len(blob))


def test_escaped_brackets_in_strings_do_not_count_as_nesting():
    meta = {"k": '[[[[{{{{\\"\\\\"]]]]'}
    blob = raw_file({"__metadata__": meta, "a": entry()}, bytes(4))
    assert parse(blob)[1] == meta


# -- fuzzing ------------------------------------------------------------------------------------

BASE, _ = write_pack({"w": torch.randn(2, 3), "b": torch.arange(3), "e": torch.empty(0)}, {"m": "v"})


def check_only_corrupt(blob: bytes, size: int | None = None) -> None:
    try:
        entries, meta, start = parse_header(file_reader(blob), len(blob) if size is None else size)
    except CorruptCheckpointError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    for e in entries.values():
        assert start <= e["data_offsets"][0] <= e["data_offsets"][1] <= len(blob)


@FAST
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(blob):
    check_only_corrupt(blob)


@FAST
@given(st.binary(max_size=300))
def test_fuzz_random_header_with_valid_length(body):
    check_only_corrupt(raw_file(body, bytes(16)))


@FAST
@given(st.data())
def test_fuzz_mutated_valid_file(data):
    buf = bytearray(BASE)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        pos = data.draw(st.integers(0, len(buf) - 1)) if buf else 0
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = data.draw(st.sampled_from(b'{}[]",:0123456789-.eE \\u'))
        elif op == "cut":
            del buf[pos:pos + data.draw(st.integers(1, 8))]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    check_only_corrupt(bytes(buf))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
fields = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["U8", "F32", "BF16", "C64", "F8_E4M3", "X"]) | json_values,
    "shape": st.lists(st.integers(-2, 2**64), max_size=4) | json_values,
    "data_offsets": st.lists(st.integers(-2, 40), min_size=2, max_size=2) | json_values,
    "extra": json_values,
})
headers = st.dictionaries(st.sampled_from(["a", "b", "__metadata__", "c"]), fields | json_values, max_size=4)


@FAST
@given(headers, st.integers(0, 40))
def test_fuzz_structured_headers(header, data_len):
    check_only_corrupt(raw_file(json.dumps(header).encode(), bytes(data_len)))
