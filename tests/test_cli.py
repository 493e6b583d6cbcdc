"""The ckpt command line, driven the way people use it: a real console script and CKPT_STORE."""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from ckpt import CheckpointStore
from ckpt.cli import cli

CKPT = os.path.join(os.path.dirname(sys.executable), "ckpt")


@pytest.fixture
def loc(tmp_path):
    store = CheckpointStore(tmp_path / "s")
    for e, acc in enumerate([0.5, 0.9, 0.7]):
        store.save("r", e, {"model": {"w": torch.full((10,), float(e))}}, {"val_acc": acc, "loss": 1 - acc})
    store.close()
    return str(tmp_path / "s")


def run(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


def test_console_script_with_env_store(loc):
    out = subprocess.run([CKPT, "--json", "ls", "--sort", "val_acc"], env={**os.environ, "CKPT_STORE": loc},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["epoch"] for r in rows] == [1, 2, 0]
    assert {"id", "run", "epoch", "step", "metrics", "created_at", "parent", "tags"} <= set(rows[0])


def test_ls_table_and_sort_override(loc):
    res = run("--store", loc, "ls", "--sort", "loss")
    assert res.exit_code == 0 and "val_acc" in res.output
    res = run("--store", loc, "--json", "ls", "--sort", "val_acc", "--asc")
    assert [r["epoch"] for r in json.loads(res.output)] == [0, 2, 1]


def test_show_with_tensors(loc):
    res = run("--store", loc, "show", "best:val_acc", "--tensors")
    assert res.exit_code == 0
    assert "epoch 1" in res.output and "model/w" in res.output and "float32" in res.output
    doc = json.loads(run("--store", loc, "--json", "show", "r@2", "--tensors").output)
    assert doc["epoch"] == 2 and doc["tensors"][0]["shape"] == [10]


def test_verify_exit_codes(loc):
    assert run("--store", loc, "verify", "--full").exit_code == 0
    store = CheckpointStore(loc)
    m = store.manifest("r@1")
    path = os.path.join(loc, "packs", f"{m.slots[0].pack}.safetensors")
    with open(path, "r+b") as f:
        f.seek(m.slots[0].offset)
        f.write(b"\xff\xff\xff\xff")
    res = run("--store", loc, "verify", "--full")
    assert res.exit_code == 1 and "corrupt-tensor" in res.output


def test_errors_are_one_line_with_advice(loc, tmp_path):
    out = subprocess.run([CKPT, "--store", loc, "show", "nosuchthing"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: no checkpoint matches")
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    # the same through click's runner (cheaper than a process each; tests/test_cli_docs.py covers every command)
    res = run("--store", str(tmp_path / "none"), "ls")
    assert res.exit_code == 2 and "no ckpt store" in res.stderr
    assert not (tmp_path / "none").exists()
    res = run("ls", env={"CKPT_STORE": ""})
    assert res.exit_code == 2 and "CKPT_STORE" in res.stderr


def test_reindex_command(loc):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(os.path.join(loc, "index.sqlite" + suffix)):
            os.unlink(os.path.join(loc, "index.sqlite" + suffix))
    res = run("--store", loc, "reindex")
    assert res.exit_code == 0 and "3 checkpoints" in res.output


def test_version():
    res = run("--version")
    assert res.exit_code == 0 and "ckpt" in res.output
