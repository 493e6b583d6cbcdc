"""ckpt restore / export / import: files that plain torch and safetensors read, compared bit for bit."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ckpt import CheckpointStore
from ckpt.cli import cli

CKPT = os.path.join(os.path.dirname(sys.executable), "ckpt")


from conftest import assert_same as same  # noqa: E402


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def training_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 7, bias=True))
    model[1].weight = model[0].weight  # tied, as in language models
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "extra": {"half": torch.randn(3, dtype=torch.float16), "bf16": torch.randn(2, 2, dtype=torch.bfloat16),
                  "mask": torch.tensor([True, False]), "ids": torch.arange(5), "scalar": torch.tensor(3.5),
                  "empty": torch.zeros(0, 3), "nan": torch.tensor([float("nan"), -0.0, float("inf")])},
        "epoch": 7, "history": [0.5, float("nan"), 0.75], "shape": (2, 3), "name": "run-a",
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    loc = str(tmp_path_factory.mktemp("files") / "s")
    with CheckpointStore(loc) as store:
        store.save("r", 0, {"model": {"w": torch.zeros(3)}}, {"val_acc": 0.1})
        store.save("r", 1, training_state(), {"val_acc": 0.9, "val_loss": 0.2}, step=100)
        store.save("r", 2, {"model": {"w": torch.ones(3)}}, {"val_acc": 0.5})
    return loc


@pytest.fixture
def saved(template, tmp_path):
    """A fresh copy of the template store, and the state saved as r@1 (the best by val_acc)."""
    shutil.copytree(template, tmp_path / "s")
    return str(tmp_path / "s"), training_state()


def test_restore_pt_loads_with_weights_only_bit_for_bit(saved, tmp_path):
    loc, state = saved
    out = tmp_path / "best.pt"
    res = run("--store", loc, "restore", "best:val_acc", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stdout and "(r@1 step 100)" in res.stdout
    restored = torch.load(out, weights_only=True)
    same(restored, state)
    model = restored["model"]
    assert model["0.weight"].data_ptr() == model["1.weight"].data_ptr()  # the tie survived


def test_restore_only_one_subtree_and_int_keys(saved, tmp_path):
    loc, state = saved
    assert run("--store", loc, "restore", "r@1", "--only", "model", "-o", str(tmp_path / "m.pt")).exit_code == 0
    same(torch.load(tmp_path / "m.pt", weights_only=True), state["model"])
    res = run("--store", loc, "restore", "r@1", "--only", "optimizer/state/0", "-o", str(tmp_path / "s0.pt"))
    assert res.exit_code == 0, res.output
    same(torch.load(tmp_path / "s0.pt", weights_only=True), state["optimizer"]["state"][0])
    res = run("--store", loc, "restore", "r@1", "--only", "optimizer/param_groups/0", "-o", str(tmp_path / "g.pt"))
    assert torch.load(tmp_path / "g.pt", weights_only=True)["lr"] == 1e-3
    res = run("--store", loc, "restore", "r@1", "--only", "nosuchkey", "-o", str(tmp_path / "x.pt"))
    assert res.exit_code == 2 and "no key 'nosuchkey'" in res.stderr and not (tmp_path / "x.pt").exists()


def test_restore_safetensors_flat_names_metadata_and_exact_reimport(saved, tmp_path):
    loc, state = saved
    out = tmp_path / "full.safetensors"
    assert run("--store", loc, "restore", "r@1", "-o", str(out)).exit_code == 0
    flat = load_file(out)
    same(flat["model.0.weight"], state["model"]["0.weight"])
    same(flat["model.1.weight"], state["model"]["0.weight"])  # tied: present under both names
    same(flat["optimizer.state.0.exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    same(flat["extra.bf16"], state["extra"]["bf16"])
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    info = json.loads(meta["ckpt.checkpoint"])
    assert (info["run"], info["epoch"], info["step"], info["metrics"]["val_acc"]) == ("r", 1, 100, 0.9)
    tree = json.loads(meta["ckpt.tree"])
    assert tree["epoch"] == 7 and tree["name"] == "run-a"
    assert tree["optimizer"]["param_groups"][0]["lr"] == 1e-3
    # importing the file gives back exactly what was saved: int keys, tuples, NaN, the tie
    res = run("--store", loc, "import", str(out), "--run", "copy")
    assert res.exit_code == 0, res.output
    with CheckpointStore(loc, readonly=True) as store:
        info = store.get("copy")
        assert (info.epoch, info.step, info.metrics) == (1, 100, {"val_acc": 0.9, "val_loss": 0.2})
        back = store.load("copy")
    same(back, state)
    assert back["model"]["0.weight"] is back["model"]["1.weight"]


def test_restore_converts_what_weights_only_cannot_read(tmp_path):
    loc = str(tmp_path / "s")
    state = {"arr": np.arange(6, dtype=np.int32).reshape(2, 3), "npf": np.float64(2.5),
             "fs": frozenset({1, 2}), "model": {"w": torch.ones(2)}}
    with CheckpointStore(loc) as store:
        store.save("np", 0, state)
    res = run("--store", loc, "restore", "np", "-o", str(tmp_path / "n.pt"))
    assert res.exit_code == 0, res.output
    assert "numpy array(s) written as tensors" in res.stderr
    back = torch.load(tmp_path / "n.pt", weights_only=True)
    same(back["arr"], torch.arange(6, dtype=torch.int32).reshape(2, 3))
    assert back["npf"] == 2.5 and back["fs"] == {1, 2}
    # safetensors keeps numpy arrays as such for an import, and as tensors for plain readers
    assert run("--store", loc, "restore", "np", "-o", str(tmp_path / "n.safetensors")).exit_code == 0
    assert load_file(tmp_path / "n.safetensors")["arr"].dtype == torch.int32
    assert run("--store", loc, "import", str(tmp_path / "n.safetensors"), "--run", "np2").exit_code == 0
    with CheckpointStore(loc, readonly=True) as store:
        back = store.load("np2")
    same(back["arr"], state["arr"])
    assert type(back["npf"]) is np.float64 and back["fs"] == frozenset({1, 2})


def test_restore_refuses_to_overwrite_without_force(saved, tmp_path):
    loc, _ = saved
    out = tmp_path / "x.pt"
    out.write_bytes(b"precious")
    res = run("--store", loc, "restore", "latest", "-o", str(out))
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {out} exists; pass --force to overwrite it"
    assert out.read_bytes() == b"precious"
    res = run("--store", loc, "restore", "latest", "-o", str(out), "--force")
    assert res.exit_code == 0
    same(torch.load(out, weights_only=True), {"model": {"w": torch.ones(3)}})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_default_name_is_sanitised_into_the_cwd(tmp_path, monkeypatch):
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        info = store.save("../../escape/run", 3, {"w": torch.ones(1)}, step=9)
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    res = run("--store", loc, "restore", info.id[:8])
    assert res.exit_code == 0, res.output
    (written,) = list(work.iterdir())
    assert written.name == f"escape_run-e3-s9-{info.id[:8]}.pt"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
    assert not (tmp_path / "escape").exists()
    res = run("--store", loc, "restore", info.id[:8], "--only", "w", "-o", str(tmp_path) + os.sep)
    assert res.exit_code == 0 and (tmp_path / f"escape_run-e3-s9-{info.id[:8]}-w.pt").exists()


def test_restore_through_the_installed_entry_point(saved, tmp_path):
    loc, state = saved
    out = subprocess.run([CKPT, "--store", loc, "restore", "best:val_acc", "-o", "model.safetensors", "--only",
                          "model"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {tmp_path / 'model.safetensors'} (safetensors, 3 tensors")
    flat = load_file(tmp_path / "model.safetensors")
    assert set(flat) == {"0.weight", "1.weight", "1.bias"}
    for k, v in state["model"].items():
        same(flat[k], v)


def test_export_weights_only_for_inference(tmp_path):
    loc = str(tmp_path / "s")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with CheckpointStore(loc) as store:
        store.save("m", 5, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 5},
                   {"val_acc": 0.8})
    out = tmp_path / "model.safetensors"
    res = run("--store", loc, "export", "m", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "key model" in res.stdout
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fresh.load_state_dict(load_file(out))  # strict: exactly the model's keys, nothing else
    for k, v in model.state_dict().items():
        same(fresh.state_dict()[k], v)
    with safe_open(out, "pt") as f:
        assert f.metadata()["format"] == "pt" and "ckpt.tree" not in f.metadata()
    # .pt export: a flat dict of tensors; everything at the top level with --only ''
    res = run("--store", loc, "export", "m", "--only", "optimizer", "-o", str(tmp_path / "o.pt"))
    assert res.exit_code == 0 and "non-tensor value(s) left out" in res.stderr
    assert torch.load(tmp_path / "o.pt", weights_only=True) == {}
    res = run("--store", loc, "export", "m", "-o", str(out))
    assert res.exit_code == 2 and "exists" in res.stderr
    # export -> import -> export gives the same file content
    assert run("--store", loc, "import", str(out), "--run", "hub").exit_code == 0
    with CheckpointStore(loc, readonly=True) as store:
        info, back = store.get("hub"), store.load("hub")
    assert (info.epoch, info.metrics) == (5, {"val_acc": 0.8})
    assert set(back) == {"model", "metadata"} and back["metadata"]["ckpt.key"] == "model"
    for k, v in model.state_dict().items():
        same(back["model"][k], v)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_import_refuses_pickle_payloads_without_running_them(tmp_path, legacy):
    loc = str(tmp_path / "s")
    CheckpointStore(loc).close()
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    state = {"model": {"w": torch.ones(2)}, "x": Payload(marker)}
    if legacy:
        evil.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, evil)
    res = run("--store", loc, "import", str(evil), "--run", "x", "--epoch", "0")
    assert res.exit_code == 4  # unsafe data (docs/cli.md exit codes)
    assert res.stderr.startswith(f"error: {evil} holds pickled Python objects") and len(res.stderr.splitlines()) == 1
    assert "executed nothing" in res.stderr and "Traceback" not in res.output
    assert not marker.exists()
    with CheckpointStore(loc, readonly=True) as store:
        assert store.list() == []


def test_import_plain_pt_and_lightning_ckpt(tmp_path):
    loc = str(tmp_path / "s")
    sd = OrderedDict(w=torch.randn(3, 3), b=torch.randn(3))
    torch.save(sd, tmp_path / "plain.pth")
    res = run("--store", loc, "import", str(tmp_path / "plain.pth"), "--run", "p")
    assert res.exit_code == 2 and "pass --epoch" in res.stderr
    res = run("--store", loc, "import", str(tmp_path / "plain.pth"), "--run", "p", "--epoch", "90",
              "--metric", "val_acc=0.76", "--tag", "baseline")
    assert res.exit_code == 0, res.output
    lightning = {
        "epoch": 4, "global_step": 400, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [], "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "monitor": "val_loss", "current_score": torch.tensor(0.25), "best_model_score": torch.tensor(0.2),
            "dirpath": "/ckpts"}},
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3, "layers": [3, 3]},
    }
    torch.save(lightning, tmp_path / "last.ckpt")
    res = run("--store", loc, "--json", "import", str(tmp_path / "last.ckpt"), "--run", "lit")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["epoch"], doc["step"], doc["metrics"]) == (4, 400, {"val_loss": 0.25})
    assert doc["source"]["kind"] == "lightning"
    with CheckpointStore(loc, readonly=True) as store:
        same(store.load("baseline"), sd)
        assert store.get("p").metrics == {"val_acc": 0.76}
        assert {r.name: r.status for r in store.runs()} == {"p": "completed", "lit": "completed"}
        same(store.load("lit"), lightning)
    res = run("--store", loc, "import", str(tmp_path / "last.ckpt"), "--run", "lit2", "--epoch", "9", "--step", "1")
    assert res.exit_code == 0 and "(lit2@9 step 1)" in res.stdout
    res = run("--store", loc, "export", "lit", "-o", str(tmp_path / "lit.safetensors"))  # Lightning: state_dict
    assert res.exit_code == 0 and "key state_dict" in res.stdout
    same(OrderedDict(sorted(load_file(tmp_path / "lit.safetensors").items())), OrderedDict(sorted(sd.items())))


def test_import_foreign_safetensors_and_bad_input(tmp_path):
    loc = str(tmp_path / "s")
    tensors = {"layer.weight": torch.randn(2, 2), "layer.bias": torch.randn(2)}
    save_file(tensors, tmp_path / "hub.safetensors", metadata={"format": "pt", "source": "hub"})
    res = run("--store", loc, "import", str(tmp_path / "hub.safetensors"), "--run", "hub", "--epoch", "0")
    assert res.exit_code == 0, res.output
    assert res.stderr == f"note: creating a new ckpt store at {loc}\n"
    res = run("--store", loc, "import", str(tmp_path / "hub.safetensors"), "--run", "hub", "--epoch", "1",
              "--parent", "nosuch")
    assert res.exit_code == 2 and "nosuch" in res.stderr
    with CheckpointStore(loc, readonly=True) as store:
        back = store.load("hub")
    assert back["metadata"] == {"format": "pt", "source": "hub"}
    for k, v in tensors.items():
        same(back["model"][k], v)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    res = run("--store", loc, "import", str(tmp_path / "junk.pt"), "--run", "j", "--epoch", "0")
    assert res.exit_code == 4 and "cannot be read by torch.load(weights_only=True)" in res.stderr
    (tmp_path / "w.npz").write_bytes(b"x")
    res = run("--store", loc, "import", str(tmp_path / "w.npz"), "--run", "j", "--epoch", "0")
    assert res.exit_code == 2 and "suffix" in res.stderr
    res = run("--store", loc, "import", str(tmp_path / "missing.pt"), "--run", "j", "--epoch", "0")
    assert res.exit_code == 2 and "missing.pt" in res.stderr
    res = run("--store", loc, "import", str(tmp_path / "hub.safetensors"), "--run", "j", "--metric", "acc")
    assert res.exit_code == 2 and "NAME=NUMBER" in res.stderr


def test_every_storable_value_survives_restore_and_import(tmp_path):
    loc = str(tmp_path / "s")
    state = {
        "bytes": b"\x00\xff", "ba": bytearray(b"ab"), "c": 1 + 2j, "sl": slice(1, None, 2), "size": torch.Size([2, 3]),
        "dt": torch.bfloat16, "dev": torch.device("cpu"), "set": {1, (2, 3)}, "fs": frozenset({"a"}),
        "npi": np.int16(-3), "big": 2**70, "inf": float("-inf"), "none": None, "t": (1, [2, {"x": 3}]),
        "$odd": {"$tensor": "not a tensor"}, 7: "int key", (1, "k"): "tuple key",
        "od": OrderedDict(b=torch.ones(1), a=2),
    }
    state["od"]._metadata = {"": {"version": 2}}
    with CheckpointStore(loc) as store:
        store.save("v", 0, state)
    assert run("--store", loc, "restore", "v", "-o", str(tmp_path / "v.safetensors")).exit_code == 0
    assert run("--store", loc, "import", str(tmp_path / "v.safetensors"), "--run", "v2").exit_code == 0
    with CheckpointStore(loc, readonly=True) as store:
        back = store.load("v2")
    same(back, state)
    assert back["od"]._metadata == {"": {"version": 2}} and back["set"] == {1, (2, 3)}
    assert type(back["ba"]) is bytearray and type(back["npi"]) is np.int16 and back["fs"] == frozenset({"a"})
    res = run("--store", loc, "restore", "v", "-o", str(tmp_path / "v.pt"))
    assert res.exit_code == 0 and "slice(s) written as (start, stop, step) tuples" in res.stderr
    back = torch.load(tmp_path / "v.pt", weights_only=True)
    assert back["sl"] == (1, None, 2) and back["dt"] is torch.bfloat16 and back[(1, "k")] == "tuple key"


@pytest.mark.parametrize("tree", ['{"$np": ["O", 1]}', '{"$dtype": "load"}', '{"$import": "os"}',
                                  '{"$tensor": "missing"}', '{"$dict": [[[1], 2]]}', '[[[[', '{"$slice": ["a"]}'])
def test_hostile_safetensors_metadata_is_refused(tmp_path, tree):
    path = tmp_path / "h.safetensors"
    save_file({"w": torch.ones(1)}, path, metadata={"ckpt.tree": tree})
    res = run("--store", str(tmp_path / "s"), "import", str(path), "--run", "h", "--epoch", "0")
    assert res.exit_code == 4 and "ckpt.tree" in res.stderr and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "s").exists()
