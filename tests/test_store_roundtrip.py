"""Round trips through a real store: structure, dtypes, tied weights, optimizer continuation."""

import collections
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ckpt import CheckpointStore, UnsupportedTypeError
from ckpt.format.tensors import supported_dtype_names, dtype_from_name
from conftest import assert_same

ALL_DTYPES = [dtype_from_name(n) for n in supported_dtype_names()]


def _random_tensor(dtype: torch.dtype, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nbytes = int(np.prod(shape)) * dtype.itemsize if shape else dtype.itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def test_every_dtype_round_trips_bit_exact(any_store):
    state = {str(d): _random_tensor(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    state["zero_dim"] = torch.tensor(3.25)
    state["zero_size"] = torch.empty(0, 7, dtype=torch.float16)
    state["non_contiguous"] = torch.arange(24.0).reshape(4, 6).t()
    state["slice"] = torch.arange(100, dtype=torch.int64)[10:90:3]
    any_store.save("dtypes", 0, state)
    back = any_store.load()
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].is_contiguous()
        assert torch.equal(back[k].reshape(-1).view(torch.uint8) if v.numel() else back[k],
                           v.contiguous().reshape(-1).view(torch.uint8) if v.numel() else v), k
    assert any_store.verify().ok


def test_loads_inside_a_deterministic_training_run(store):
    """``seed_everything`` turns on deterministic algorithms, under which ``torch.empty`` fills new
    tensors with NaN and raises for float4 and the bit-packed dtypes: loads must not depend on it."""
    from ckpt.training.rng import deterministic_algorithms
    state = {str(d): _random_tensor(d, (3, 4), i) for i, d in enumerate(ALL_DTYPES)}
    state["zero_size"] = torch.empty(0, 2, dtype=torch.float16)
    store.save("det", 0, state)
    deterministic_algorithms(True)
    try:
        back = store.load()
        assert_same(state, back)
    finally:
        deterministic_algorithms(False)


def test_structure_is_preserved_exactly(any_store):
    od = collections.OrderedDict([("b", torch.ones(2)), ("a", torch.zeros(2))])
    od._metadata = {"": {"version": 1}}
    state = {"z": 1, "a": (1, 2.5, "x", None, True), "od": od, 3: [b"bytes", {7: torch.arange(3)}],
             "nan": float("nan"), "inf": -math.inf, "big": 2**80, "c": 1 + 2j, "set": {1, 2},
             "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cpu"),
             "np_scalar": np.float32(1.5), "np_array": np.arange(6, dtype=np.int16).reshape(2, 3)}
    any_store.save("struct", 0, state)
    back = any_store.load()
    assert list(back) == list(state)
    assert type(back["od"]) is collections.OrderedDict and back["od"]._metadata == od._metadata
    assert list(back["od"]) == ["b", "a"]
    assert back["a"] == state["a"] and isinstance(back["a"], tuple)
    assert 7 in back[3][1] and torch.equal(back[3][1][7], torch.arange(3))
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf and back["big"] == 2**80
    assert back["set"] == {1, 2} and back["size"] == torch.Size([2, 3]) and back["dtype"] is torch.bfloat16
    assert type(back["np_scalar"]) is np.float32 and back["np_scalar"] == np.float32(1.5)
    assert isinstance(back["np_array"], np.ndarray) and back["np_array"].dtype == np.int16
    assert (back["np_array"] == state["np_array"]).all()


leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
    st.builds(lambda d, n, s: _random_tensor(d, (n,), s), st.sampled_from(ALL_DTYPES),
              st.integers(0, 17), st.integers(0, 2**31)),
)
structures = st.recursive(
    leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(kids, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-5, 5)), kids, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=structures)
def test_property_any_nesting_round_trips(tmp_path_factory, state):
    store = CheckpointStore(tmp_path_factory.mktemp("prop"))
    store.save("p", 0, state)
    assert_same(state if not isinstance(state, torch.Tensor) else state.contiguous(), store.load())
    store.close()


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_share_storage_after_load(store):
    model = TiedLM()
    info = store.save("tied", 0, {"model": model.state_dict()})
    assert info.logical_size < 2 * 50 * 16 * 4 + 16 * 17 * 4  # tied tensor counted once
    sd = store.load()["model"]
    assert sd["embed.weight"].untyped_storage().data_ptr() == sd["head.weight"].untyped_storage().data_ptr()
    # Equal values that were not tied stay separate tensors.
    store.save("tied", 1, {"a": torch.zeros(8), "b": torch.zeros(8)})
    back = store.load()
    assert back["a"].untyped_storage().data_ptr() != back["b"].untyped_storage().data_ptr()
    back["a"] += 1
    assert back["b"].sum() == 0


def _train(model, opt, sched, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 10, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
    return model, opt, sched


def test_optimizer_and_scheduler_resume_continues_identically(store):
    model, opt, sched = _make()
    _train(model, opt, sched, 10, seed=1)
    store.save("adam", 0, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "rng": torch.get_rng_state()})
    _train(model, opt, sched, 10, seed=2)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = _make()
    state = store.load("adam@0")
    assert list(state["optimizer"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys survive
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    _train(model2, opt2, sched2, 10, seed=2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_load_into_fills_existing_parameters_in_place(store):
    model, opt, sched = _make()
    _train(model, opt, sched, 3, seed=1)
    store.save("into", 0, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    fresh, fresh_opt, _ = _make()
    ptrs = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    report = store.load_into(fresh, "into@0")
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.loaded == len(ptrs)
    for k, v in fresh.state_dict().items():
        assert v.data_ptr() == ptrs[k]  # same memory, no second copy
        assert torch.equal(v, model.state_dict()[k])
    store.load_into(fresh_opt, "into@0", key="optimizer")
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_loaded_tensors_can_move_to_shared_memory(store):
    """Loaded tensors can be sent to other processes (DataLoader workers, torch.multiprocessing), as
    torch.load's can, whether or not deterministic mode allocated them."""
    store.save("mem", 0, {"w": torch.randn(64, 64), "b": torch.arange(8), "big": torch.randn(1 << 18)})
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        got = store.load("mem@0")
        for k, v in got.items():
            v.share_memory_()
            assert v.is_shared(), k
    torch.use_deterministic_algorithms(False)


def test_load_into_a_live_optimizer_rolls_it_back_in_place(store):
    """Rolling a run back within its process: the optimizer's moments are read into the tensors it already
    has (no second copy of the state), and training then continues exactly as from a torch-style load."""
    model, opt, sched = _make()
    _train(model, opt, sched, 5, seed=1)
    store.save("live", 0, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    saved = {i: {k: v.clone() for k, v in st.items()} for i, st in opt.state_dict()["state"].items()}
    _train(model, opt, sched, 5, seed=2)  # the live state moves on
    ptrs = {i: {k: v.data_ptr() for k, v in st.items()} for i, st in opt.state_dict()["state"].items()}
    store.load_into(model, "live@0")
    store.load_into(opt, "live@0", key="optimizer")
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(v, saved[i][k]), (i, k)
            assert v.data_ptr() == ptrs[i][k], (i, k)  # read into the live tensor
    model2, opt2, sched2 = _make()
    state = store.load("live@0")
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sched.load_state_dict(sched2.state_dict())
    _train(model, opt, sched, 3, seed=3)
    _train(model2, opt2, sched2, 3, seed=3)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_load_into_an_optimizer_built_differently_is_refused_and_leaves_it_untouched(store):
    """An optimizer with other parameter groups: a typed error (still a ValueError, as torch's), and its
    live state is exactly what it was, even though it had state the checkpoint's could be read into."""
    from ckpt import InvalidArgumentError
    model, opt, sched = _make()
    _train(model, opt, sched, 3, seed=1)
    store.save("groups", 0, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    other = torch.optim.AdamW([{"params": list(model.parameters())[:2]},
                               {"params": list(model.parameters())[2:], "lr": 1e-3}])
    loss = model(torch.randn(4, 10)).pow(2).mean()
    loss.backward()
    other.step()
    before = {i: {k: v.clone() for k, v in st.items()} for i, st in other.state_dict()["state"].items()}
    with pytest.raises(InvalidArgumentError, match="parameter groups") as info:
        store.load_into(other, "groups@0", key="optimizer")
    assert isinstance(info.value, ValueError)
    for i, st in other.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(v, before[i][k]), (i, k)


def test_load_into_reports_and_refuses_mismatches(store):
    from ckpt import KeyMismatchError
    store.save("m", 0, {"model": nn.Linear(4, 3).state_dict()})
    with pytest.raises(KeyMismatchError, match="shape"):
        store.load_into(nn.Linear(4, 5), "latest")
    bigger = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(KeyMismatchError, match="missing|no key"):
        store.load_into(bigger, "latest")
    target = {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)}
    report = store.load_into(target, "latest", strict=False)
    assert report.missing_keys == ["extra"] and report.unexpected_keys == ["bias"]
    assert target["weight"].abs().sum() > 0


def test_sub_tree_load_reads_only_that_part(store):
    model = nn.Linear(64, 64)
    store.save("sub", 0, {"model": model.state_dict(), "big": torch.zeros(1000, 1000)})
    sd = store.load(key="model")
    assert set(sd) == {"weight", "bias"}
    assert torch.equal(sd["weight"], model.weight.detach())


def test_frozen_backbone_is_stored_once(store):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    head = nn.Linear(256, 10)
    for p in backbone.parameters():
        p.requires_grad_(False)
    first = store.save("ft", 0, {"backbone": backbone.state_dict(), "head": head.state_dict()})
    with torch.no_grad():
        head.weight.add_(1.0)
    second = store.save("ft", 1, {"backbone": backbone.state_dict(), "head": head.state_dict()})
    head_bytes = sum(t.numel() * 4 for t in head.state_dict().values())
    assert first.new_bytes >= 2 * 256 * 257 * 4
    assert second.new_bytes <= head_bytes + 4096  # only the changed head (and a small pack header)
    # Another run with the same base model reuses it too.
    third = store.save("other-run", 0, {"backbone": backbone.state_dict()})
    assert third.new_bytes == 0
    assert torch.equal(store.load("ft@0")["backbone"]["0.weight"], backbone[0].weight)


@pytest.mark.parametrize("bad", [
    lambda: torch.sparse_coo_tensor([[0]], [1.0], (3,)),
    lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
    lambda: torch.empty(3, device="meta"),
    lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
])
def test_unsupported_tensors_get_a_clear_error_and_nothing_is_stored(store, bad):
    with pytest.raises(UnsupportedTypeError):
        store.save("bad", 0, {"x": bad()})
    assert store.list() == []


def test_custom_objects_are_refused_at_save(store):
    class Config:
        pass
    with pytest.raises(UnsupportedTypeError, match="Config"):
        store.save("bad", 0, {"cfg": Config()})
    with pytest.raises(UnsupportedTypeError):
        store.save("bad", 0, {"fn": lambda x: x})


def test_rng_states_restore_the_same_random_stream(store):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    store.save("rng", 0, {"py": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    s = store.load()
    random.setstate(s["py"])
    np.random.set_state(s["np"])
    torch.set_rng_state(s["torch"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_compressed_store_round_trips_and_is_smaller(tmp_path):
    torch.manual_seed(0)
    state = {"w": (torch.randn(512, 512) * 0.02).to(torch.bfloat16), "f": torch.randn(256, 256) * 0.02}
    plain = CheckpointStore(tmp_path / "plain", compression="none")
    packed = CheckpointStore(tmp_path / "zstd", compression="zstd")
    a = plain.save("r", 0, state)
    b = packed.save("r", 0, state)
    assert b.new_bytes < a.new_bytes / 1.15
    assert a.content_hash == b.content_hash  # hashes are of uncompressed bytes
    assert_same(state, packed.load())
    assert packed.verify().ok


def test_content_hash_ignores_how_the_state_was_built(store):
    name = "shared-string-value"
    a = store.save("h", 0, {"k1": name, "k2": name, "w": torch.ones(3)})
    b = store.save("h", 1, {"k1": "shared-string-" + "value", "k2": "".join(["shared-", "string-value"]),
                            "w": torch.ones(3)})
    c = store.save("h", 2, {"k1": name, "k2": name, "w": torch.zeros(3)})
    assert a.content_hash == b.content_hash != c.content_hash
