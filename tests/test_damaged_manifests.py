"""A format-2 manifest damaged or tampered in each way the hostile-input issue lists.

Each case: the newest checkpoint's manifest is edited (re-signed, as anyone who can write the store
could), then the store must still open (with and without its index, the index being only a cache),
`reindex` skips and reports the bad manifest, `verify` names it, `latest` falls back to the previous
checkpoint with a warning, and nothing committed is lost. Through the API and the CLI.
"""

from __future__ import annotations

import os
import struct
import sys
import tracemalloc
import warnings

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import manifests as mh  # noqa: E402

from ckpt import CheckpointStore, CkptError  # noqa: E402
from ckpt.format import manifest as mf  # noqa: E402
from ckpt.cli import cli  # noqa: E402


def _header(key, value):
    def edit(doc):
        doc.header[key] = value
    return edit


def _slot_length(value):
    def edit(doc):
        i = int(doc.rows["nbytes"].argmax())
        doc.rows["length"][i] = value
    return edit


CASES = {
    "created_at not ISO 8601": _header("created_at", "yesterday, about noon"),
    "created_at not a string": _header("created_at", 12),
    "epoch 2**63": _header("epoch", 2**63),
    "step 2**70": _header("step", 2**70),
    "logical_size 2**64": _header("logical_size", 2**64),
    "epoch a 5000-digit integer": _header("epoch", "X"),  # replaced below by raw JSON digits
    "metric a 5000-digit integer": _header("metrics", {"val_acc": "X"}),
    "slot length 2**40": _slot_length(2**40),
    "slot length 2**33": _slot_length(2**33),
}


def _damage(loc: str, cid: str, case: str) -> None:
    doc = mh.read(loc, cid)
    CASES[case](doc)
    data = mh.build(doc)
    if "5000-digit" in case:  # json.dumps cannot write it under the digit limit: put the digits in by hand
        (hlen,) = struct.unpack_from("<Q", data, 8)
        text = data[16:16 + hlen].rstrip(b" ").replace(b'"X"', b"9" * 5000)
        text += b" " * (-len(text) % 8)
        data = mf.MAGIC + struct.pack("<Q", len(text)) + text + data[16 + hlen:]
    p = mh.path(loc, cid)
    os.chmod(p, 0o644)
    with open(p, "wb") as f:
        f.write(data)


def _state(e: int) -> dict:
    return {"model": {"w": torch.full((600, 600), float(e)), "b": torch.arange(4) + e}, "epoch": e}


@pytest.fixture
def damaged(tmp_path, request):
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as s:
        s.save("r", 0, _state(0), {"val_acc": 0.5})
        bad = s.save("r", 1, _state(1), {"val_acc": 0.6})
    _damage(loc, bad.id, request.param)
    return loc, bad.id


def _good_ids(store) -> list[int]:
    return [i.epoch for i in store.list()]


@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
def test_a_damaged_manifest_is_skipped_reported_and_never_fatal(damaged):
    loc, bad = damaged
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with CheckpointStore(loc) as s:  # the index still lists it: loads fall back
                state = s.load("latest")
                assert state["epoch"] in (0, 1)  # 1 only when the damage left the bytes readable
                report = s.verify(full=True)
                assert not report.ok and any(bad[:12] in str(p) for p in report.problems), report.problems
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20, f"{peak >> 20} MiB allocated reading a damaged manifest"
    for name in os.listdir(loc):
        if name.startswith("index.sqlite"):
            os.unlink(os.path.join(loc, name))  # the docs say deleting the index is always safe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with CheckpointStore(loc) as s:  # rebuilt from the manifests: the bad one skipped
            assert 0 in _good_ids(s)
            torch.testing.assert_close(s.load("r@0")["model"]["w"], _state(0)["model"]["w"])
            s.reindex()
            assert 0 in _good_ids(s)
    res = CliRunner().invoke(cli, ["--store", loc, "reindex"])
    assert res.exit_code in (0, 4), res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["--store", loc, "verify"])
    assert res.exit_code == 1 and bad[:8] in res.output and "reindex" not in res.output, res.output
    res = CliRunner().invoke(cli, ["--store", loc, "ls"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("damaged", ["created_at not ISO 8601", "epoch 2**63"], indirect=True)
def test_a_damaged_manifest_behind_a_dead_writers_pending_row_does_not_block_opens(damaged):
    loc, bad = damaged
    import sqlite3
    with sqlite3.connect(os.path.join(loc, "index.sqlite")) as db:  # as if its writer died before step D
        db.execute("UPDATE checkpoints SET status = 'pending', seq = NULL, pid = 999999999 WHERE id = ?", (bad,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with CheckpointStore(loc) as s:
            assert _good_ids(s) == [0]
            s.save("r", 2, _state(2), {"val_acc": 0.7})
            assert s.latest().epoch == 2
    with pytest.raises(CkptError):
        with CheckpointStore(loc) as s:
            s.load(bad)
