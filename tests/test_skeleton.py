"""Tests for ckpt.format.skeleton: round trips of real training states, tied weights,
refusals at save time, and malicious skeletons that must never execute anything."""

from __future__ import annotations

import copyreg
import dataclasses
import enum
import math
import pickle
import random
import time
from collections import OrderedDict, defaultdict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from attacks.pickles import (PROTO4, Payload, call1, ext_lookup, ext_payload, payloads, stack_global,
                             unicode, with_persistent_ids)
from ckpt.errors import CorruptCheckpointError, UnsafeMetadataError, UnsupportedTypeError
from ckpt.format import skeleton as skeleton_module
from ckpt.format.skeleton import (ArraySlot, Flattened, TensorSlot, flatten, load_structure,
                                         unflatten)


# ------------------------------------------------------------------------------------ helpers


def stored(flat: Flattened) -> list[torch.Tensor]:
    """What reading the tensors back from storage gives: fresh, contiguous, detached copies."""
    return [t.detach().clone().contiguous() for t in flat.tensors]


def round_trip(state: Any) -> Any:
    flat = flatten(state)
    return unflatten(flat.skeleton, stored(flat))


def get_path(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def assert_same(a: Any, b: Any) -> None:
    """Deep equality that also demands equal types, key order, dtypes and OrderedDict attributes."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, np.generic):
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b]
        for key in a:
            assert_same(a[key], b[key])
        if isinstance(a, OrderedDict):
            assert vars(a).keys() == vars(b).keys()
            for name in vars(a):
                assert_same(getattr(a, name), getattr(b, name))
    elif isinstance(a, (list, tuple)) and type(a) is not torch.Size:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def trained(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return optimizer


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight


# ------------------------------------------------------------------------- real training states


def test_module_state_dict_round_trip_keeps_ordereddict_and_metadata() -> None:
    model = small_model()
    state_dict = model.state_dict()
    flat = flatten({"model": state_dict})
    restored = unflatten(flat.skeleton, stored(flat))["model"]

    assert type(restored) is OrderedDict
    assert list(restored) == list(state_dict)
    assert restored._metadata == state_dict._metadata and restored._metadata[""] is not None
    assert_same(state_dict, restored)
    assert [path for path, _ in flat.leaves] == [("model", key) for key in state_dict]
    assert flat.kinds == ["torch"] * len(state_dict)

    fresh = small_model()
    fresh.load_state_dict(restored)
    x = torch.randn(2, 3)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_adam_state_dict_after_a_step_keeps_int_keys_and_tuples() -> None:
    model = small_model()
    optimizer = trained(model)
    original = optimizer.state_dict()
    restored = round_trip({"optimizer": original})["optimizer"]

    assert_same(original, restored)
    assert list(restored["state"]) == list(range(len(list(model.parameters()))))
    assert all(type(k) is int for k in restored["state"])
    assert type(restored["param_groups"][0]["betas"]) is tuple
    assert restored["state"][0]["step"].dtype == original["state"][0]["step"].dtype

    clone = small_model()
    clone.load_state_dict(model.state_dict())
    second = torch.optim.Adam(clone.parameters(), lr=0.01, betas=(0.8, 0.99))
    second.load_state_dict(restored)
    for m, opt in ((model, optimizer), (clone, second)):
        opt.zero_grad()
        m(torch.ones(5, 3)).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
    lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),  # holds float inf
    lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5),
], ids=["StepLR", "OneCycleLR", "ReduceLROnPlateau", "CosineAnnealingLR"])
def test_lr_scheduler_state_dict_round_trip(make: Any) -> None:
    model = small_model()
    optimizer = trained(model)
    scheduler = make(optimizer)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for _ in range(3):
        optimizer.step()
        scheduler.step(1.0) if plateau else scheduler.step()  # type: ignore[call-arg]
    original = scheduler.state_dict()
    restored = round_trip({"scheduler": original})["scheduler"]
    assert_same(original, restored)
    again = make(torch.optim.Adam(small_model().parameters(), lr=0.01))
    again.load_state_dict(restored)


def test_full_training_state_round_trip() -> None:
    model = small_model()
    optimizer = trained(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": 3, "step": 1200,
             "config": {"dtype": torch.bfloat16, "device": torch.device("cuda", 1), "lr": 1e-3}}
    assert_same(state, round_trip(state))


def test_rng_states_round_trip_and_reproduce_the_next_numbers() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    generator = np.random.default_rng(4)
    random.random(), np.random.rand(), torch.rand(1), generator.random()
    state = {"rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                     "torch": torch.get_rng_state(), "numpy_generator": generator.bit_generator.state}}
    flat = flatten(state)
    expected = (random.random(), np.random.rand(3), torch.rand(3), generator.random())

    restored = unflatten(flat.skeleton, stored(flat))["rng"]
    random.setstate(restored["python"])
    np.random.set_state(restored["numpy"])
    torch.set_rng_state(restored["torch"])
    generator.bit_generator.state = restored["numpy_generator"]
    again = (random.random(), np.random.rand(3), torch.rand(3), generator.random())

    assert again[0] == expected[0] and again[3] == expected[3]
    assert np.array_equal(again[1], expected[1]) and torch.equal(again[2], expected[2])
    assert type(restored["numpy"][1]) is np.ndarray and restored["numpy"][1].dtype == np.uint32
    assert ("numpy", 1) in [path[1:] for path, _ in flat.leaves]


# --------------------------------------------------------------------------------- tied tensors


def test_tied_embeddings_share_one_slot_and_storage_after_unflatten() -> None:
    model = TiedLM()
    state_dict = model.state_dict()
    assert state_dict["embed.weight"] is not state_dict["lm_head.weight"]  # fresh objects each time
    flat = flatten({"model": state_dict})

    slots = dict(flat.leaves)
    assert slots[("model", "embed.weight")] == slots[("model", "lm_head.weight")]
    assert len(flat.tensors) == len(state_dict) - 1
    assert [path for path, _ in flat.leaves] == [("model", key) for key in state_dict]

    restored = unflatten(flat.skeleton, stored(flat))["model"]
    a, b = restored["embed.weight"], restored["lm_head.weight"]
    assert a is b
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    fresh = TiedLM()
    fresh.load_state_dict(restored)
    assert torch.equal(fresh.lm_head.weight, model.embed.weight)


def test_equal_values_and_different_views_are_not_tied() -> None:
    base = torch.arange(12.0)
    same = torch.zeros(3)
    state = {
        "zeros_a": torch.zeros(3), "zeros_b": torch.zeros(3),  # equal values, different storage
        "row0": base[:6], "row1": base[6:],  # same storage, different offsets
        "flat": base, "matrix": base.view(3, 4), "transposed": base.view(3, 4).t(),
        "obj_1": same, "obj_2": [same],  # the same object twice: tied
        "view_again": base[:6],  # a new object, same view as row0: tied
        "empty_a": torch.empty(0), "empty_b": torch.empty(0),  # no memory, nothing to tie
    }
    slots = dict(flatten(state).leaves)
    assert slots[("zeros_a",)] != slots[("zeros_b",)]
    assert len({slots[(k,)] for k in ("row0", "row1", "flat", "matrix", "transposed")}) == 5
    assert slots[("obj_1",)] == slots[("obj_2", 0)]
    assert slots[("view_again",)] == slots[("row0",)]
    assert slots[("empty_a",)] != slots[("empty_b",)]

    restored = round_trip(state)
    assert restored["zeros_a"] is not restored["zeros_b"]
    restored["zeros_a"].add_(1)
    assert torch.equal(restored["zeros_b"], torch.zeros(3))


def test_conjugate_view_is_not_tied_to_its_base() -> None:
    z = torch.tensor([1 + 2j, 3 - 1j])
    slots = dict(flatten({"z": z, "conj": z.conj()}).leaves)
    assert slots[("z",)] != slots[("conj",)]


def test_tensors_are_kept_as_given_without_copies() -> None:
    weight = nn.Parameter(torch.randn(3, 4))
    transposed = torch.randn(4, 5).t()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    flat = flatten({"p": weight, "t": transposed, "a": array})
    assert flat.tensors[0] is weight and flat.tensors[1] is transposed
    assert not flat.tensors[1].is_contiguous()
    assert flat.kinds == ["torch", "torch", "numpy"]
    assert np.shares_memory(flat.tensors[2].numpy(), array)


def test_tied_numpy_arrays_come_back_as_one_array() -> None:
    array = np.arange(4.0)
    restored = round_trip({"a": array, "b": [array], "c": array.copy()})
    assert restored["a"] is restored["b"][0]
    assert restored["c"] is not restored["a"]


# ------------------------------------------------------------------------------ plain values


def test_plain_values_round_trip_exactly() -> None:
    state = OrderedDict([
        (0, None), (1, True), ("big", 2**200 + 1), ("neg", -(2**70)), ("nan", float("nan")),
        ("inf", float("-inf")), ("neg_zero", -0.0), ("complex", 1.5 - 2j), ("text", "héllo"),
        ("bytes", b"\x00\xff"), ("bytearray", bytearray(b"ab")), ("set", {1, "a", (2, 3)}),
        ("frozenset", frozenset({4})), ("tuple", (1, (2, [3]))), ("empty", ((), [], {}, set())),
        ("size", torch.Size([2, 3])), ("dtypes", [torch.float32, torch.bfloat16, torch.float8_e4m3fn]),
        ("devices", [torch.device("cpu"), torch.device("cuda", 0), torch.device("meta")]),
        ("np_scalars", [np.float32(1.5), np.float16(2), np.int64(-3), np.uint8(7), np.bool_(True),
                        np.complex64(1j), np.longlong(5)]),
        ("slice", slice(1, None, 2)), ((1, "tuple key"), "value"),
    ])
    state.extra = {"note": "OrderedDict attributes are kept too"}
    assert_same(state, round_trip(state))


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                                   "uint64", "float16", "float32", "float64", "complex64", "complex128"])
def test_numpy_arrays_come_back_as_ndarrays_of_the_same_dtype(dtype: str) -> None:
    array = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    state = {"a": array, "strided": array[:, ::2], "reversed": array[::-1], "scalar": array[0, 0].copy(),
             "zero_d": np.array(array[1, 1])}
    restored = round_trip(state)
    for key, value in state.items():
        assert_same(value, restored[key])


def test_load_structure_gives_placeholders() -> None:
    array = np.zeros(2)
    flat = flatten({"w": torch.zeros(1), "a": array, "again": array})
    assert load_structure(flat.skeleton) == {"w": TensorSlot(0), "a": ArraySlot(1), "again": ArraySlot(1)}
    slot = TensorSlot(3)
    with pytest.raises(AttributeError):
        slot.slot = 4
    assert not hasattr(slot, "__dict__")


def test_protocol_4_skeletons_load() -> None:
    data = with_persistent_ids({"w": "W", "od": OrderedDict(a={1, 2})}, {}, protocol=4)
    assert load_structure(data) == {"w": "W", "od": OrderedDict(a={1, 2})}


# ----------------------------------------------------------------------------------- property


hashable = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4),
                     st.tuples(st.integers(-3, 3), st.text(max_size=2)))
TORCH_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
                torch.int32, torch.int64, torch.bool, torch.complex64]
NUMPY_DTYPES = ["float32", "float64", "float16", "int8", "uint16", "int64", "bool", "complex128"]
shapes = st.lists(st.integers(0, 3), max_size=3)
tensors = st.builds(lambda dtype, shape, seed: torch.randint(0, 5, shape, generator=torch.Generator()
                                                              .manual_seed(seed)).to(dtype),
                    st.sampled_from(TORCH_DTYPES), shapes, st.integers(0, 1000))
arrays = st.builds(lambda dtype, shape: (np.arange(math.prod(shape)) % 5).astype(dtype).reshape(shape),
                   st.sampled_from(NUMPY_DTYPES), shapes)
numpy_scalars = st.builds(lambda dtype, value: np.dtype(dtype).type(value),
                          st.sampled_from(NUMPY_DTYPES), st.integers(0, 100))
leaf_values = st.one_of(
    hashable, st.integers(-(2**100), 2**100), st.floats(), st.complex_numbers(allow_nan=False),
    st.binary(max_size=6), st.sampled_from(TORCH_DTYPES),
    st.sampled_from(["cpu", "cuda:1", "meta"]).map(torch.device),
    shapes.map(torch.Size), numpy_scalars, tensors, arrays)
trees = st.recursive(leaf_values, lambda children: st.one_of(
    st.lists(children, max_size=4), st.lists(children, max_size=3).map(tuple),
    st.dictionaries(hashable, children, max_size=4),
    st.dictionaries(st.text(max_size=3), children, max_size=3).map(OrderedDict),
    st.sets(hashable, max_size=3), st.frozensets(hashable, max_size=3)), max_leaves=15)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_any_allowed_structure_round_trips(state: Any) -> None:
    flat = flatten(state)
    structure = load_structure(flat.skeleton)
    assert len(flat.tensors) == len(flat.kinds)
    for path, slot in flat.leaves:
        leaf = get_path(state, path)
        kind = "numpy" if isinstance(leaf, np.ndarray) else "torch"
        assert flat.kinds[slot] == kind
        if kind == "torch":
            assert flat.tensors[slot] is leaf
        placeholder = get_path(structure, path)
        assert type(placeholder) is (ArraySlot if kind == "numpy" else TensorSlot)
        assert placeholder.slot == slot
    assert_same(state, unflatten(flat.skeleton, stored(flat)))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_skeletons_fail_cleanly(data: st.DataObject) -> None:
    skeleton = bytearray(flatten({"w": torch.zeros(2), "opt": {0: {"lr": 0.1, "betas": (0.9, 0.99)}},
                                  "od": OrderedDict(a=np.float32(1)), "t": torch.float16}).skeleton)
    for _ in range(data.draw(st.integers(1, 4))):
        skeleton[data.draw(st.integers(0, len(skeleton) - 1))] = data.draw(st.integers(0, 255))
    try:
        unflatten(bytes(skeleton), [torch.zeros(2)])
    except (CorruptCheckpointError, UnsafeMetadataError):
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_fail_cleanly(data: bytes) -> None:
    try:
        load_structure(data)
    except (CorruptCheckpointError, UnsafeMetadataError):
        pass


# ------------------------------------------------------------------- refusals at save time


class Point:
    def __init__(self) -> None:
        self.x = 1


@dataclasses.dataclass
class Config:
    lr: float = 0.1


class Color(enum.IntEnum):
    RED = 1


class MyTensor(torch.Tensor):
    pass


FakeDTensor = type("DTensor", (torch.Tensor,), {"__module__": "torch.distributed.tensor._api"})


def _cycle() -> list:
    items: list = []
    items.append(items)
    return items


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def _odict_with_tensor_attribute() -> OrderedDict:
    od = OrderedDict(a=1)
    od._metadata = {"w": torch.zeros(1)}
    return od


UNSUPPORTED = {
    "sparse_coo": (lambda: torch.zeros(3).to_sparse(), "to_dense"),
    "sparse_csr": (lambda: torch.eye(3).to_sparse_csr(), "to_dense"),
    "quantized": (lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.quint8), "quantized"),
    "meta": (lambda: torch.empty(3, device="meta"), "meta device"),
    "nested": (lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]), "nested tensor"),
    "subclass": (lambda: torch.zeros(2).as_subclass(MyTensor), "MyTensor"),
    "dtensor": (lambda: torch.zeros(2).as_subclass(FakeDTensor), "use ckpt's torch.distributed integration"),
    "uninitialized": (lambda: nn.parameter.UninitializedParameter(), "UninitializedParameter"),
    "custom_class": (Point, "Point"),
    "function": (lambda: len, "builtin_function_or_method"),
    "lambda": (lambda: (lambda x: x), "function"),
    "class": (lambda: nn.Linear, "builtins.type"),
    "namedtuple": (lambda: namedtuple("Pair", "a b")(1, 2), "_asdict"),
    "dataclass": (Config, "dataclasses.asdict"),
    "enum": (lambda: Color.RED, ".value"),
    "defaultdict": (lambda: defaultdict(list), "defaultdict"),
    "object_array": (lambda: np.array([1, "a"], dtype=object), "Python objects"),
    "string_array": (lambda: np.array(["a"]), "dtype <U1"),
    "big_endian_array": (lambda: np.zeros(2, dtype=">f4"), "byte order"),
    "numpy_str": (lambda: np.str_("a"), "numpy scalar"),
    "longdouble": (lambda: np.longdouble(1), "numpy scalar"),
    "numpy_dtype": (lambda: np.dtype("float32"), "numpy"),
    "masked_array": (lambda: np.ma.masked_array([1, 2], mask=[0, 1]), "MaskedArray"),
    "placeholder": (lambda: TensorSlot(0), "TensorSlot"),
    "slice_of_str": (lambda: slice("a"), "slice"),
    "tensor_key": (lambda: {torch.zeros(1): 1}, "dict key"),
    "tensor_in_set": (lambda: {torch.zeros(1)}, "set"),
    "tensor_in_attribute": (_odict_with_tensor_attribute, "OrderedDict attribute"),
    "cycle": (_cycle, "cycle"),
    "too_deep": (lambda: _deep(500), "levels deep"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # beta/deprecated tensor kinds warn on creation
@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_values_are_refused_at_flatten_naming_path(name: str) -> None:
    make, hint = UNSUPPORTED[name]
    with pytest.raises(UnsupportedTypeError) as caught:
        flatten({"model": {"layer.0": [1, make()]}})
    message = str(caught.value)
    assert hint in message
    assert "state['model']['layer.0'][1]" in message


def test_oversized_skeleton_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt.format import unpickle
    monkeypatch.setattr(skeleton_module, "MAX_SKELETON_BYTES", 1000)
    monkeypatch.setattr(unpickle, "MAX_SKELETON_BYTES", 1000)
    with pytest.raises(UnsupportedTypeError, match="limit"):
        flatten({"blob": b"x" * 2000})
    with pytest.raises(CorruptCheckpointError, match="limit"):
        load_structure(pickle.dumps(b"x" * 2000))


# ------------------------------------------------------------------------------ attacks


def _assert_refused(payload: bytes, global_name: str, sentinel: Path) -> None:
    for load in (load_structure, lambda data: unflatten(data, [torch.zeros(1)])):
        with pytest.raises(UnsafeMetadataError) as caught:
            load(payload)
        assert global_name in str(caught.value)
        assert "malicious" in str(caught.value)
    time.sleep(0.02)  # an escaped Popen would run asynchronously
    assert not sentinel.exists()


@pytest.mark.parametrize("payload", payloads(), ids=lambda p: p.id)
def test_malicious_pickles_are_refused_without_running(payload: Payload, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    _assert_refused(payload.build(sentinel), payload.global_name, sentinel)


@pytest.mark.parametrize("payload", [p for p in payloads() if p.live], ids=lambda p: p.id)
def test_live_payloads_do_run_under_plain_pickle(payload: Payload, tmp_path: Path) -> None:
    """Control: the refusals above stopped working exploits, not broken pickles."""
    sentinel = tmp_path / "control"
    pickle.loads(payload.build(sentinel))
    deadline = time.monotonic() + 5
    while not sentinel.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sentinel.exists()


@pytest.mark.parametrize("code", [0xF1, 0xF123, 0x7FFF0123], ids=["EXT1", "EXT2", "EXT4"])
def test_copyreg_extension_codes_are_refused_even_when_cached(code: int, tmp_path: Path) -> None:
    # The C unpickler serves an EXT code from copyreg's process-wide cache, without calling
    # find_class, once anything has loaded it: warm the cache, then attack.
    copyreg.add_extension("posix", "system", code)
    try:
        pickle.loads(ext_lookup(code))
        _assert_refused(ext_payload(code, tmp_path / "pwned"), "posix.system", tmp_path / "pwned")
    finally:
        copyreg.remove_extension("posix", "system", code)
    _assert_refused(ext_payload(code, tmp_path / "pwned"), f"extension code {code}", tmp_path / "pwned")


@pytest.mark.parametrize("payload,opcode", [
    (PROTO4 + b"(" + stack_global("builtins", "set") + b"o.", "OBJ"),  # allowed class, refused opcode
    (PROTO4 + b"]r\xff\xff\xff\xff.", "LONG_BINPUT"),  # would size the memo at 32 GiB
    (PROTO4 + b"]q\x05.", "BINPUT"),
    (b"\x80\x05\x97.", "NEXT_BUFFER"),
    (b"P0\n.", "PERSID"),
    (PROTO4 + stack_global("builtins", "set") + b")\x92.", "NEWOBJ_EX"),
], ids=["OBJ", "LONG_BINPUT", "BINPUT", "NEXT_BUFFER", "PERSID", "NEWOBJ_EX"])
def test_opcodes_ckpt_never_writes_are_refused(payload: bytes, opcode: str) -> None:
    with pytest.raises(UnsafeMetadataError, match=opcode):
        load_structure(payload)


@pytest.mark.parametrize("pid", [
    ("tensor", -1), ("tensor", 5), ("tensor", 2**40), ("tensor", True), ("tensor", "0"), ("tensor",),
    ("tensor", 0, 0), ("ndarray", None), ("dtype", "os.system"), ("dtype", 5), ("device", "cuda", -1),
    ("device", "not a device", None), ("device", "nosuchdevice", None), ("npscalar", "O", b""),
    ("npscalar", "f", b"\x00"), ("npscalar", "f", "abcd"), ("storage", "FloatStorage", "0", "cpu", 4),
    "tensor", (), [("tensor", 0)], (b"tensor", 0),
], ids=repr)
def test_malformed_persistent_ids_are_refused(pid: Any) -> None:
    marker = object()
    skeleton = with_persistent_ids({"w": marker}, {id(marker): pid})
    with pytest.raises(CorruptCheckpointError):
        unflatten(skeleton, [torch.zeros(1)])


def test_slot_used_as_tensor_and_array_is_refused() -> None:
    a, b = object(), object()
    skeleton = with_persistent_ids([a, b], {id(a): ("tensor", 0), id(b): ("ndarray", 0)})
    with pytest.raises(CorruptCheckpointError, match="both"):
        load_structure(skeleton)


def test_slots_beyond_the_tensors_given_are_refused() -> None:
    flat = flatten({"a": torch.zeros(1), "b": torch.ones(1)})
    with pytest.raises(CorruptCheckpointError, match="out of range"):
        unflatten(flat.skeleton, flat.tensors[:1])


PLACEHOLDER = b"\x8c\x06tensor\x94K\x00\x86\x94Q"  # ("tensor", 0) BINPERSID


@pytest.mark.parametrize("payload", [
    PROTO4 + PLACEHOLDER + b"N}\x8c\x04slot\x94K\x07s\x86b.",  # BUILD (None, {"slot": 7})
    PROTO4 + PLACEHOLDER + b"}\x8c\x04slot\x94K\x07sb.",  # BUILD {"slot": 7}
    PROTO4 + PLACEHOLDER + b"K\x01\x85R.",  # placeholder(1)
    PROTO4 + PLACEHOLDER + b")\x81.",  # NEWOBJ on a placeholder
    PROTO4 + stack_global("torch", "Size") + PLACEHOLDER + b"\x85\x85R.",  # torch.Size((placeholder,))
], ids=["BUILD-slotstate", "BUILD-dict", "REDUCE", "NEWOBJ", "Size-of-placeholder"])
def test_placeholders_cannot_be_built_or_called(payload: bytes) -> None:
    with pytest.raises(CorruptCheckpointError):
        load_structure(payload)


@pytest.mark.parametrize("payload", [
    PROTO4 + b"}" + PLACEHOLDER + b"K\x01s.",  # {placeholder: 1}
    PROTO4 + b"}(" + PLACEHOLDER + b"\x85K\x01u.",  # {(placeholder,): 1}
    PROTO4 + b"\x8f(" + PLACEHOLDER + b"\x90.",  # {placeholder}
    PROTO4 + stack_global("collections", "OrderedDict") + b")R}" + unicode("_metadata") + PLACEHOLDER
    + b"sb.",  # OrderedDict() with _metadata = placeholder, via BUILD
    PROTO4 + stack_global("builtins", "slice") + PLACEHOLDER + b"\x85R.",  # slice(placeholder)
], ids=["dict-key", "tuple-in-key", "set", "attribute", "slice"])
def test_placeholders_where_flatten_never_puts_them_are_refused(payload: bytes) -> None:
    with pytest.raises(CorruptCheckpointError):
        load_structure(payload)


def test_placeholder_in_a_tuple_value_is_replaced() -> None:
    restored = unflatten(PROTO4 + b"}(K\x01" + PLACEHOLDER + b"\x85u.", [torch.ones(1)])
    assert type(restored[1]) is tuple and torch.equal(restored[1][0], torch.ones(1))


def test_cycles_and_deep_nesting_in_a_skeleton_are_refused() -> None:
    cyclic = PROTO4 + b"]\x94h\x00a."  # L = []; L.append(L)
    with pytest.raises(CorruptCheckpointError, match="cycle"):
        load_structure(cyclic)
    deep = PROTO4 + b"]" * 5000 + b"a" * 4999 + b"."
    with pytest.raises(CorruptCheckpointError, match="levels deep"):
        load_structure(deep)


def _dag_skeleton(levels: int) -> bytes:
    """L0 = [placeholder]; Ln = [Ln-1, Ln-1]: a few bytes per level, 2**levels paths."""
    def get(index: int) -> bytes:
        return b"j" + index.to_bytes(4, "little")  # LONG_BINGET

    body = PROTO4 + b"]\x94" + PLACEHOLDER + b"a0"  # memo 0: L0; the placeholder takes 1 and 2
    previous = 0
    for memo in range(3, 3 + levels):
        body += b"]\x94(" + get(previous) + get(previous) + b"e0"
        previous = memo
    return body + get(previous) + b"."


def test_structures_that_explode_as_trees_are_refused() -> None:
    with pytest.raises(CorruptCheckpointError, match="expands"):
        load_structure(_dag_skeleton(60))  # 2**60 paths: any recursive walker would hang
    restored = unflatten(_dag_skeleton(8), [torch.ones(1)])  # modest sharing is fine, and kept
    assert restored[0] is restored[1]
    while isinstance(restored, list):
        restored = restored[0]
    assert torch.equal(restored, torch.ones(1))


def test_shared_containers_come_back_equal_and_heavy_sharing_is_refused_at_save() -> None:
    # Skeletons have no pickle memo (equal states give equal bytes, format 2's content hash relies on
    # it): a container shared at two places comes back as two equal containers; a tensor stays one.
    shared = [torch.zeros(2), {"lr": 0.1}]
    restored = round_trip({"a": shared, "b": (shared, shared)})
    assert restored["a"] == restored["b"][0] == restored["b"][1]
    assert restored["a"][0] is restored["b"][1][0]

    dag: list = [1]
    for _ in range(14):
        dag = [dag, dag]
    with pytest.raises(UnsupportedTypeError, match="expands"):
        flatten({"dag": dag})


def test_truncated_and_garbage_skeletons_are_corrupt() -> None:
    skeleton = flatten({"w": torch.zeros(1), "betas": (0.9, 0.99), "od": OrderedDict(a=1)}).skeleton
    for end in range(len(skeleton)):
        with pytest.raises(CorruptCheckpointError):
            load_structure(skeleton[:end])
    for garbage in (b"", b"\x00\x01\x02", b"not a pickle", b"\x80\x09.", b"\xff" * 16):
        with pytest.raises(CorruptCheckpointError):
            load_structure(garbage)
    with pytest.raises(CorruptCheckpointError):
        load_structure("a str")  # type: ignore[arg-type]
    with pytest.raises(CorruptCheckpointError):  # allowed constructor, bad arguments
        load_structure(PROTO4 + call1(stack_global("builtins", "complex"), unicode("nope")) + b".")
