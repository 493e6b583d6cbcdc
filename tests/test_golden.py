"""Scenario 10: golden stores of every released format open, verify and restore bit-exact.

Each ``tests/golden/format-N/`` holds a store written by the ckpt of that format (``store/``, made by
``tests/golden/make_golden.py``) and ``expected.json``: every live checkpoint's identity and a description
of its state (types, key order, and the SHA-256 of every tensor's and array's bytes). The tests work on a
copy, so opening with a newer ckpt may migrate its index; they never touch the checked-in files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from ckpt import CheckpointNotFoundError, CheckpointStore, SchemaVersionError
from ckpt.cli import cli
from ckpt.format import manifest as mf

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
FORMATS = sorted(d for d in os.listdir(GOLDEN) if d.startswith("format-")
                 and os.path.isdir(os.path.join(GOLDEN, d)))

_spec = importlib.util.spec_from_file_location("make_golden", os.path.join(GOLDEN, "make_golden.py"))
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)  # type: ignore[union-attr]


def expected_of(fmt: str) -> dict:
    with open(os.path.join(GOLDEN, fmt, make_golden.EXPECTED)) as f:
        return json.load(f)


@pytest.fixture(params=FORMATS)
def golden(request, tmp_path):
    """(a copy of the golden store, its expected.json)."""
    loc = str(tmp_path / request.param)
    shutil.copytree(os.path.join(GOLDEN, request.param, make_golden.STORE), loc)
    return loc, expected_of(request.param)


def _check_checkpoints(store: CheckpointStore, exp: dict) -> None:
    infos = store.list()
    assert [i.id for i in infos] == [c["id"] for c in exp["checkpoints"]]
    for info, c in zip(infos, exp["checkpoints"]):
        assert (info.run, info.epoch, info.step, info.parent, info.content_hash) == \
            (c["run"], c["epoch"], c["step"], c["parent"], c["content_hash"]), c["id"]
        assert {k: repr(v) for k, v in info.metrics.items()} == c["metrics"]
        assert list(info.tags) == c["tags"]
        state = store.load(info.id)
        assert make_golden.describe(state) == c["state"], f"{info.run}@{info.epoch} does not restore bit-exact"
        if info.run == "golden-a":  # tied weights come back as one tensor
            a, b = (state[k1][k2] for k1, k2 in exp["tied"])
            assert a is b or a.data_ptr() == b.data_ptr()


def _check_names(store: CheckpointStore, exp: dict) -> None:
    for tag, cid in exp["tags"].items():
        assert store.get(tag).id == cid
    assert store.latest().id == exp["latest"]
    assert store.best(run="golden-a").id == exp["best_golden_a"]
    assert store.get("best:val_loss").id == exp["best_golden_a"]
    runs = {r.name: r for r in store.runs()}
    for name, want in exp["runs"].items():
        assert (runs[name].objective, runs[name].mode, runs[name].status) == \
            (want["objective"], want["mode"], want["status"]), name
    with pytest.raises(CheckpointNotFoundError):
        store.get(exp["deleted"]["id"])


def test_golden_store_opens_verifies_and_restores_bit_exact(golden):
    loc, exp = golden
    with CheckpointStore(loc) as store:
        report = store.verify(full=True)
        assert report.ok, [str(p) for p in report.problems]
        assert report.checkpoints == len(exp["checkpoints"]) and report.tensors_checked > 0
        _check_checkpoints(store, exp)
        _check_names(store, exp)
        assert not os.path.exists(os.path.join(loc, "packs", exp["deleted"]["pack"] + ".safetensors"))
        assert store.gc(grace_seconds=0).packs == []  # every pack is referenced; nothing was left over
        codecs = {codec for c in exp["checkpoints"] for codec in c["codecs"]}
        assert codecs == {"raw", "zstd"}
        # load_into a freshly built model: parameters and buffers, tie included
        model = make_golden.Tiny()
        store.load_into(model, "golden-best")
        want = store.load("golden-best", key="model")
        for k, v in model.state_dict().items():
            assert torch.equal(v, want[k]), k
        assert model.head.weight is model.embed.weight


def test_golden_store_with_its_index_deleted_is_rebuilt_from_storage(golden):
    loc, exp = golden
    os.unlink(os.path.join(loc, "index.sqlite"))
    with CheckpointStore(loc) as store:  # rebuilt from manifests and refs on open
        _check_checkpoints(store, exp)
        _check_names(store, exp)
        assert store.reindex() == len(exp["checkpoints"])
        assert store.verify(full=True).ok


def test_golden_store_read_only_and_through_the_cli(golden, tmp_path):
    loc, exp = golden
    try:
        ro = CheckpointStore(loc, readonly=True)
    except SchemaVersionError as exc:  # a later ckpt with a newer index schema: read-only never migrates
        assert "migrate" in str(exc)
    else:
        with ro:
            assert [i.id for i in ro.list()] == [c["id"] for c in exp["checkpoints"]]
            assert make_golden.describe(ro.load(exp["latest"])) == exp["checkpoints"][-1]["state"]
    res = CliRunner().invoke(cli, ["--store", loc, "verify", "--full"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = tmp_path / "best.pt"
    res = CliRunner().invoke(cli, ["--store", loc, "restore", "golden-best", "--only", "model", "-o", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    best = next(c for c in exp["checkpoints"] if c["id"] == exp["best_golden_a"])
    model_desc = dict((json.dumps(k), v) for k, v in best["state"]["$dict"])[json.dumps({"$str": "model"})]
    assert make_golden.describe(torch.load(out, weights_only=True)) == model_desc


def test_golden_stores_are_self_contained_and_small():
    assert FORMATS, "no golden store checked in"
    for fmt in FORMATS:
        root = os.path.join(GOLDEN, fmt)
        files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        assert not [f for f in files if f.endswith(("-wal", "-shm", "-journal")) or ".tmp-" in f], files
        assert sum(os.path.getsize(f) for f in files) < 1 << 20
        assert expected_of(fmt)["format"] == int(fmt.split("-", 1)[1])


def test_the_current_format_has_a_golden_store():
    """Bumping the format means adding tests/golden/format-N (see make_golden.py); old ones stay."""
    assert f"format-{mf.FORMAT}" in FORMATS


def test_format_1_store_upgrades_to_format_2_and_restores_bit_exact(tmp_path):
    loc = str(tmp_path / "old")
    shutil.copytree(os.path.join(GOLDEN, "format-1", make_golden.STORE), loc)
    exp = expected_of("format-1")
    res = CliRunner().invoke(cli, ["--store", loc, "upgrade", "--dry-run"])
    assert res.exit_code == 0 and f"would rewrite {len(exp['checkpoints'])}" in res.output, res.output
    res = CliRunner().invoke(cli, ["--store", loc, "upgrade"])
    assert res.exit_code == 0 and f"rewrote {len(exp['checkpoints'])}" in res.output, res.output
    names = os.listdir(os.path.join(loc, "manifests"))
    assert names and all(n.endswith(".ckpt") for n in names)
    with CheckpointStore(loc) as store:
        infos = store.list()
        assert [i.id for i in infos] == [c["id"] for c in exp["checkpoints"]]
        for info, c in zip(infos, exp["checkpoints"]):
            assert (info.run, info.epoch, info.step, info.parent, info.format) == \
                (c["run"], c["epoch"], c["step"], c["parent"], 2)
            assert make_golden.describe(store.load(info.id)) == c["state"]
        assert store.verify(full=True).ok
        assert store.upgrade().upgraded == []  # nothing left to do
    os.unlink(os.path.join(loc, "index.sqlite"))
    with CheckpointStore(loc) as store:  # the upgraded store rebuilds its index from format 2 alone
        assert [i.id for i in store.list()] == [c["id"] for c in exp["checkpoints"]]
        assert store.get("golden-best").id == exp["tags"]["golden-best"]
