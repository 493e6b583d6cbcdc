"""Arbitrary values at the edges (issue 12): whatever goes into save's run, epoch, step, metrics and a
state's plain values, into selectors and into command-line options comes back faithfully or is
refused with a typed ckpt error (CLI: exit 0/1/2/4/5, never 3)."""

import math
import os
import struct

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckpt import CheckpointStore
from ckpt.cli import cli
from ckpt.errors import CkptError
from ckpt.validation import INT_MAX

SETTINGS = settings(max_examples=int(os.environ.get("CKPT_FUZZ_EXAMPLES", "80")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])

HUGE_INTS = [2**62 - 1, 2**62, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**20, 10**300, 10**400, -(10**400),
             10**4000]
TOO_MANY_DIGITS = [10**4300, 10**5000, -(10**6000)]
SPECIAL_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 5e-324, 1.7976931348623157e308,
                  struct.unpack(">d", b"\xff\xf8\x00\x00\x00\x00\x00\x01")[0]]  # a negative NaN with a payload
HOSTILE_TEXT = ["", " ", "a\x00b", "\x1b]0;pwned\x07", "a\rb", "a\nb", "\x7f", "\x85", "\u202e", "\u2028",
                "\ud800", "\udcff", "latest", "best", "r@1", "a~1", "x:latest", "x" * 100_000, "é" * 600, "🚀"]

integers = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(HUGE_INTS))
floats = st.one_of(st.floats(), st.sampled_from(SPECIAL_FLOATS))
texts = st.one_of(st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
                  st.sampled_from(HOSTILE_TEXT))
numbers_or_junk = st.one_of(integers, floats, texts, st.none(), st.booleans(), st.lists(floats, max_size=2))


def same_bits(a, b) -> bool:
    """Exact equality: types, float bits (NaN payload and the sign of zero), container order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return a == b


def same_metric(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = CheckpointStore(tmp_path_factory.mktemp("edges-hyp") / "s")
    s.save("base", 0, {"w": torch.ones(2)}, {"val_acc": 0.5})
    yield s
    s.close()


_counter = iter(range(10**9))


def _saved_or_refused(store, run, epoch, state, metrics, step):
    """Save; a CkptError is a refusal (fine); anything else fails the test. Returns the info or None."""
    try:
        return store.save(run, epoch, state, metrics, step=step)
    except CkptError:
        return None


# --- save's arguments ------------------------------------------------------------------------------

@SETTINGS
@given(run=st.one_of(texts, integers, st.none()), epoch=st.one_of(integers, floats, texts, st.none()),
       step=st.one_of(st.none(), integers, floats))
def test_run_epoch_and_step(store, run, epoch, step):
    info = _saved_or_refused(store, run, epoch, {"n": next(_counter)}, None, step)
    if info is not None:
        assert (info.run, info.epoch, info.step) == (run, epoch, step)
        assert 0 <= epoch <= INT_MAX and (step is None or 0 <= step <= INT_MAX)
        got = store.get(info.id)
        assert (got.run, got.epoch, got.step) == (run, epoch, step)
        if step is None:
            assert store.get(f"{run}@{epoch}").id == info.id


@SETTINGS
@given(metrics=st.dictionaries(texts, numbers_or_junk, max_size=4))
def test_metrics(store, metrics):
    info = _saved_or_refused(store, "metrics", next(_counter), {}, metrics, None)
    if info is not None:
        assert set(info.metrics) == set(metrics)
        for name, value in metrics.items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
            assert same_metric(info.metrics[name], float(value)), (name, value, info.metrics[name])
        again = store.get(info.id)
        assert all(same_metric(again.metrics[k], v) for k, v in info.metrics.items())


plain = st.recursive(
    st.one_of(st.none(), st.booleans(), integers, floats, texts, st.binary(max_size=16)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3),
                            st.tuples(inner, inner)),
    max_leaves=12)


@SETTINGS
@given(values=st.dictionaries(texts, plain, max_size=4))
def test_state_plain_values_round_trip_exactly(store, values):
    state = {"w": torch.arange(3), "values": values}
    info = _saved_or_refused(store, "state", next(_counter), state, None, None)
    if info is not None:
        back = store.load(info.id)
        assert same_bits(back, state)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.sampled_from(TOO_MANY_DIGITS))
def test_state_ints_beyond_the_str_digit_limit(store, value):
    info = _saved_or_refused(store, "bigint", next(_counter), {"seed": value}, None, None)
    if info is not None:
        assert store.load(info.id) == {"seed": value}


# --- selectors -------------------------------------------------------------------------------------

selectors = st.one_of(
    texts, st.builds(lambda r, n: f"{r}@{n}", st.sampled_from(["base", "nosuch", ""]), integers),
    st.builds(lambda s, n: f"{s}~{n}", st.sampled_from(["latest", "base", "best", "base@0"]), integers),
    st.builds(lambda m: f"best:{m}", texts), integers, st.none(), st.binary(max_size=8))


def _has_surrogate(value) -> bool:
    return isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value)


@SETTINGS
@given(selector=selectors)
def test_selectors(store, selector):
    assume(not _has_surrogate(selector))  # test_edges_api.py: test_a_selector_with_a_lone_surrogate...
    for attempt in (lambda: store.get(selector), lambda: store.load(selector), lambda: store.open(selector),
                    lambda: store.list(run=selector) if isinstance(selector, str) else None):
        try:
            attempt()
        except CkptError:
            pass


# --- command-line options --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges-hyp-cli")
    loc = str(root / "s")
    with CheckpointStore(loc) as s:
        s.save("r", 0, {"w": torch.ones(2)}, {"val_acc": 0.5})
        s.save("r", 1, {"w": torch.zeros(2)}, {"val_acc": 0.7})
    weights = str(root / "w.safetensors")
    save_file({"w": torch.ones(2)}, weights)
    return loc, weights


def arg(strategy):
    return strategy.map(str)


cli_args = st.one_of(
    st.tuples(st.just("show"), arg(selectors)),
    st.tuples(st.just("ls"), st.just("--limit"), arg(integers)),
    st.tuples(st.just("ls"), st.just("--where"), texts),
    st.tuples(st.just("ls"), st.just("--sort"), texts),
    st.tuples(st.just("log"), st.just("--limit"), arg(integers)),
    st.tuples(st.just("log"), texts),
    st.tuples(st.just("diff"), arg(selectors), st.just("latest"), st.just("--top"), arg(integers)),
    st.tuples(st.just("prune"), st.just("--dry-run"), st.just("--keep-last"), arg(integers)),
    st.tuples(st.just("prune"), st.just("--dry-run"), st.just("--keep-every"), arg(integers)),
    st.tuples(st.just("prune"), st.just("--dry-run"), st.just("--keep-best"), texts),
    st.tuples(st.just("gc"), st.just("--dry-run"), st.just("--grace"), arg(st.one_of(floats, integers))),
    st.tuples(st.just("tag"), arg(selectors), texts),
    st.tuples(st.just("import"), st.just("WEIGHTS"), st.just("--run"), texts, st.just("--epoch"), arg(integers),
              st.just("--step"), arg(integers)),
    st.tuples(st.just("import"), st.just("WEIGHTS"), st.just("--run"), st.just("imp"), st.just("--epoch"),
              arg(st.integers(0, 10**6)), st.just("--metric"), st.builds("{}={}".format, texts, numbers_or_junk)),
    st.tuples(st.just("plot"), texts, st.just("-o"), st.sampled_from(["x.png", "x.svg", "x.PNG"])),
)


@SETTINGS
@given(args=cli_args)
def test_cli_options_exit_0_1_2_4_or_5(cli_store, tmp_path_factory, args):
    loc, weights = cli_store
    args = [weights if a == "WEIGHTS" else a for a in args]
    assume(all("\x00" not in a for a in args))  # a real argv cannot hold NUL
    if args[0] == "plot":
        args[-1] = str(tmp_path_factory.mktemp("plot") / args[-1])
    res = CliRunner().invoke(cli, ["--store", loc, *args], env={"CKPT_DEBUG": ""}, catch_exceptions=True)
    assert res.exit_code in (0, 1, 2, 4, 5), (args, res.exit_code, res.output[-2000:], res.exception)
    if res.exit_code:
        assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, (args, res.stderr)
