"""Everyday CLI use: plot draws the whole history, diff summarises the training state, runs filters by
every status, import follows training order, export writes loadable weights, objective declares "best"."""

import json
import os
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore
from ckpt.cli import cli


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok(res):
    assert res.exit_code == 0, res.output
    return res


def user_error(res, *phrases):
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, res.stderr
    assert "Traceback" not in res.output
    for p in phrases:
        assert p in res.stderr, res.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained with fit for 6 epochs, retention keeping 2: its early epochs are pruned, and its
    checkpoints carry the whole history. Plus an imported-style run with no history."""
    from ckpt.training import fit, seed_everything
    loc = str(tmp_path_factory.mktemp("everyday") / "s")
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x.sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 2))

    def evaluate(m):
        m.eval()
        out = m(x)
        return {"val_loss": nn.functional.cross_entropy(out, y).item(),
                "val_acc": (out.argmax(1) == y).float().mean().item()}
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, evaluate, store=loc, run="mlp", max_epochs=6,
        monitor="val_loss", retention=dict(keep_last=2), verbose=False)
    with CheckpointStore(loc) as store:
        for e, acc in enumerate([0.2, 0.4, 0.3]):
            store.save("plain", e, {"model": {"w": torch.full((3,), float(e))}}, {"val_acc": acc, "val_loss": 1 - acc})
    return loc


# -- plot ------------------------------------------------------------------------------------------

def test_plot_draws_the_whole_history_and_several_metrics(trained, tmp_path):
    with CheckpointStore(trained, readonly=True) as store:
        stored = sorted(i.epoch for i in store.list(run="mlp"))
    assert len(stored) < 6  # retention pruned some epochs...
    out = tmp_path / "curves.png"
    res = ok(run("--store", trained, "plot", "train_loss", "val_loss", "--run", "mlp", "-o", str(out), "--json"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(res.stdout)
    assert doc["metrics"] == ["train_loss", "val_loss"]
    series = {s["metric"]: s for s in doc["series"]}
    for m in ("train_loss", "val_loss"):
        assert series[m]["source"] == "history" and series[m]["x"] == [0, 1, 2, 3, 4, 5]  # ...all are drawn
        assert sorted(p[0] for p in series[m]["checkpoints"]) == stored
    assert series["val_loss"]["best"]["x"] in stored
    text = ok(run("--store", trained, "plot", "train_loss", "val_loss", "-o", str(tmp_path / "c.svg"))).stdout
    assert "from the training history" in text and "best: mlp train_loss" in text


def test_plot_falls_back_to_the_checkpoints_metrics(trained, tmp_path):
    doc = json.loads(ok(run("--store", trained, "--json", "plot", "val_acc", "--run", "plain",
                            "-o", str(tmp_path / "p.png"))).stdout)
    (s,) = doc["series"]
    assert s["source"] == "checkpoints" and s["x"] == [0, 1, 2] and s["y"] == pytest.approx([0.2, 0.4, 0.3])
    assert s["best"]["x"] == 1


def test_plot_refuses_an_unsupported_image_format_before_any_work(trained, tmp_path):
    out = tmp_path / "x.bmp"
    user_error(run("--store", trained, "plot", "val_acc", "-o", str(out)), "'.bmp' is not an image format",
               ".png", ".svg", ".pdf")
    assert not out.exists()
    user_error(run("--store", trained, "plot", "val_acc", "-o", str(tmp_path / "noext")), "no suffix")
    user_error(run("--store", trained, "plot", "val_acc", "nosuch", "-o", str(tmp_path / "y.png")),
               "no checkpoint has metric 'nosuch'")


# -- diff ------------------------------------------------------------------------------------------

def test_diff_summarises_training_state_in_one_line_each(trained):
    with CheckpointStore(trained, readonly=True) as store:
        a, b = [i.id for i in store.list(run="mlp")][-2:]
    res = ok(run("--store", trained, "diff", a, b))
    out = res.stdout
    assert "history: +1 epoch" in out
    assert "rng: torch changed (5,056 bytes)" in out  # dropout draws from torch's generator only
    assert "data order: changed" in out
    assert max(len(line) for line in out.splitlines()) < 200  # no 624-integer tuple dumped
    assert "rng/python" not in out and "history/" not in out
    assert "model/0.weight" in out and "loop/epoch" in out
    doc = json.loads(ok(run("--store", trained, "diff", a, b, "--json")).stdout)
    assert {s["kind"] for s in doc["summary"]} >= {"rng", "history", "data order"}
    assert any(v["key"].startswith("rng/") for v in doc["values"]) or \
        any(c["key"].startswith("rng/") for c in doc["changed"])  # --json still has every key


def test_diff_rng_line_names_the_generators_that_moved(tmp_path):
    from ckpt.training import rng
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        store.save("r", 0, {"rng": rng.capture(), "w": torch.zeros(2)})
        torch.rand(3)
        store.save("r", 1, {"rng": rng.capture(), "w": torch.zeros(2)})
        random.random()
        np.random.rand()
        store.save("r", 2, {"rng": rng.capture(), "w": torch.zeros(2)})
    line = next(line for line in ok(run("--store", loc, "diff", "r@0", "r@1")).stdout.splitlines() if "rng" in line)
    assert line.strip().startswith("rng: torch changed (") and line.strip().endswith(" bytes)")
    line = next(line for line in ok(run("--store", loc, "diff", "r@1", "r@2")).stdout.splitlines() if "rng" in line)
    assert line.strip().startswith("rng: numpy, python changed")


def test_diff_only_one_subtree_and_top_limits_values_too(trained):
    with CheckpointStore(trained, readonly=True) as store:
        a, b = [i.id for i in store.list(run="mlp")][-2:]
    out = ok(run("--store", trained, "diff", a, b, "--only", "model")).stdout
    assert "only keys under model" in out and "model/0.weight" in out
    assert "optimizer" not in out and "loop/" not in out and "training state" not in out
    assert "identical tensors: 0" in out
    doc = json.loads(ok(run("--store", trained, "diff", a, b, "--only", "loop", "--json")).stdout)
    assert doc["changed"] == [] and {v["key"] for v in doc["values"]} >= {"loop/epoch", "loop/global_step"}
    assert all(v["key"].startswith("loop/") for v in doc["values"])
    user_error(run("--store", trained, "diff", a, b, "--only", "modle"), "--only modle", "'model'")
    full = ok(run("--store", trained, "diff", a, b)).stdout.split("changed values (")[1]
    n = int(full.split(")")[0].split(",")[0])
    assert n > 1
    top = ok(run("--store", trained, "diff", a, b, "--top", "1")).stdout
    values = top.split("changed values (")[1]
    assert f"{n}, {n - 1} more not shown)" in values and len(values.strip().splitlines()) == 2
    assert "more not shown" in top.split("changed tensors (")[1].split("\n")[0]


# -- runs ------------------------------------------------------------------------------------------

def test_runs_status_filter_accepts_every_status_runs_shows(tmp_path):
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        for name, status in (("a", "completed"), ("b", "failed"), ("c", "interrupted"), ("d", None)):
            store.save(name, 0, {"w": torch.zeros(1)})
            if status:
                store.finish_run(name, status)
    shown = {r["name"]: r["status"] for r in json.loads(ok(run("--store", loc, "runs", "--json")).stdout)}
    assert shown["c"] == "interrupted"
    for status in set(shown.values()) | {"running", "completed", "failed", "interrupted", "crashed"}:
        res = ok(run("--store", loc, "--json", "runs", "--status", status))
        assert [r["name"] for r in json.loads(res.stdout or "[]")] == [n for n, s in shown.items() if s == status]
    assert "interrupted" in ok(run("--store", loc, "runs", "--status", "interrupted")).stdout


# -- import ----------------------------------------------------------------------------------------

def lightning_file(path, epoch, step, fill):
    torch.save({"state_dict": {"w": torch.full((3,), fill)}, "epoch": epoch, "global_step": step,
                "pytorch-lightning_version": "2.4.0"}, path)


def test_import_orders_files_by_epoch_and_step_not_by_the_command_line(tmp_path):
    loc = str(tmp_path / "s")
    lightning_file(tmp_path / "last.ckpt", 2, 6, 2.0)
    lightning_file(tmp_path / "epoch=1-step=4.ckpt", 1, 4, 1.0)
    lightning_file(tmp_path / "epoch=0-step=2.ckpt", 0, 2, 0.0)
    ok(run("--store", loc, "import", str(tmp_path / "last.ckpt"), str(tmp_path / "epoch=1-step=4.ckpt"),
           str(tmp_path / "epoch=0-step=2.ckpt"), "--run", "lit"))
    with CheckpointStore(loc, readonly=True) as store:
        infos = store.list(run="lit")
        assert [(i.epoch, i.step) for i in infos] == [(0, 2), (1, 4), (2, 6)]
        assert store.get("lit:latest").epoch == 2 and store.load("latest")["state_dict"]["w"][0] == 2.0
        assert [i.parent for i in infos] == [None, infos[0].id, infos[1].id]
    # an earlier epoch imported later: its lineage is by epoch; the user is told it becomes the latest
    loc2 = str(tmp_path / "s2")
    ok(run("--store", loc2, "import", str(tmp_path / "last.ckpt"), "--run", "lit"))
    res = ok(run("--store", loc2, "import", str(tmp_path / "epoch=0-step=2.ckpt"), "--run", "lit"))
    assert "already has later checkpoints" in res.stderr
    # two files for one epoch and step: refused before anything is written
    lightning_file(tmp_path / "copy.ckpt", 1, 4, 1.0)
    user_error(run("--store", str(tmp_path / "s3"), "import", str(tmp_path / "copy.ckpt"),
                   str(tmp_path / "epoch=1-step=4.ckpt"), "--run", "lit"), "are both epoch 1, step 4")
    assert not (tmp_path / "s3").exists()
    user_error(run("--store", loc, "import", str(tmp_path / "last.ckpt"), str(tmp_path / "copy.ckpt"), "--run",
                   "x", "--epoch", "3"), "--epoch apply to one file")


def test_import_of_a_tutorial_pth_records_its_results_as_metrics(tmp_path):
    loc = str(tmp_path / "s")
    model = nn.Linear(2, 2)
    torch.save({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": {},
                "loss": torch.tensor(0.25), "val_acc": 0.91, "top1_acc": 76, "lr": 0.01, "seed": 3,
                "best": True, "correct": 120}, tmp_path / "tutorial.pth")
    res = ok(run("--store", loc, "--json", "import", str(tmp_path / "tutorial.pth"), "--run", "tut"))
    doc = json.loads(res.stdout)
    assert doc["epoch"] == 5 and doc["metrics"] == {"loss": 0.25, "val_acc": 0.91, "top1_acc": 76.0}
    # the re-import advice is a shell command, not Python
    res = run("--store", loc, "import", str(tmp_path / "tutorial.pth"), "--run", "tut")
    user_error(res, f"ckpt rm {doc['id'][:12]}", "--epoch")
    assert "store.delete" not in res.stderr
    # the model's weights are what export writes by default
    out = tmp_path / "w.safetensors"
    ok(run("--store", loc, "export", "tut", "-o", str(out)))
    nn.Linear(2, 2).load_state_dict(load_file(out))


# -- export ----------------------------------------------------------------------------------------

def test_export_refuses_to_call_optimizer_state_weights(tmp_path):
    loc = str(tmp_path / "s")
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    with CheckpointStore(loc) as store:
        store.save("r", 0, {"net": model.state_dict(), "optimizer": opt.state_dict()})
    user_error(run("--store", loc, "export", "r", "-o", str(tmp_path / "w.safetensors")), "--only", "optimizer",
               "net")
    ok(run("--store", loc, "export", "r", "--only", "net", "-o", str(tmp_path / "w.safetensors")))
    nn.Linear(2, 2).load_state_dict(load_file(tmp_path / "w.safetensors"))


def test_export_of_a_hugging_face_trainer_checkpoint_writes_the_model_weights(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from ckpt.integrations.huggingface import store_checkpoint_dir
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    d = tmp_path / "checkpoint-500"
    d.mkdir()
    sd = model.state_dict()
    names = list(sd)
    save_file({k: sd[k] for k in names[:2]}, d / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({k: sd[k] for k in names[2:]}, d / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    torch.save(opt.state_dict(), d / "optimizer.pt")
    torch.save({"python": random.getstate()}, d / "rng_state.pth")
    (d / "training_args.bin").write_bytes(b"\x80\x04 pickled TrainingArguments")
    (d / "config.json").write_text('{"model_type": "toy"}')
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        store_checkpoint_dir(store, str(d), "hf", 1, step=500, metrics={"eval_loss": 0.5})
    out = tmp_path / "model.safetensors"
    res = ok(run("--store", loc, "export", "hf", "-o", str(out)))
    assert "2 tensors" not in res.stdout and "4 tensors" in res.stdout
    weights = load_file(out)
    assert set(weights) == set(names)
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    fresh.load_state_dict(weights)  # strict: exactly the model's keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())
    # one stored file, chosen with --only
    ok(run("--store", loc, "export", "hf", "--only", "files/model-00002-of-00002.safetensors/tensors",
           "-o", str(tmp_path / "part.safetensors")))
    assert set(load_file(tmp_path / "part.safetensors")) == set(names[2:])


def test_export_of_a_distributed_checkpoint_assembles_loadable_weights(tmp_path):
    from ckpt.integrations import dcp as ckpt_dcp
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        ckpt_dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, store, "d", 0)
        ckpt_dcp.save({"net": model.state_dict(), "optim": opt.state_dict()}, store, "d", 1)
    out = tmp_path / "w.safetensors"
    ok(run("--store", loc, "export", "d@0", "-o", str(out)))
    weights = load_file(out)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    fresh.load_state_dict(weights)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    ok(run("--store", loc, "export", "d@0", "--only", "optim", "-o", str(tmp_path / "o.pt")))
    assert all(k.startswith("state.") for k in torch.load(tmp_path / "o.pt", weights_only=True))
    user_error(run("--store", loc, "export", "d@1", "-o", str(tmp_path / "x.safetensors")), "--only", "net",
               "optim")
    ok(run("--store", loc, "export", "d@1", "--only", "net", "-o", str(tmp_path / "n.safetensors")))
    assert set(load_file(tmp_path / "n.safetensors")) == set(model.state_dict())


def test_dcp_shards_are_assembled_at_their_offsets():
    """Chunks as several ranks write them (uneven, along both dimensions), put back in place."""
    from ckpt.cli.weights import dcp_select, dcp_weights
    whole = torch.arange(7 * 6, dtype=torch.float32).reshape(7, 6)
    layout = [((0, 0), (4, 6)), ((4, 0), (3, 4)), ((4, 4), (3, 2))]
    pieces = {("state_dict_metadata", "model.w", "chunks", n, "data"): whole[o0:o0 + s0, o1:o1 + s1].reshape(-1)
              for n, ((o0, o1), (s0, s1)) in enumerate(layout)}
    structure = {"format": "torch.distributed.checkpoint", "state_dict_metadata": {
        "model.w": {"type": "tensor", "dtype": torch.float32, "size": torch.Size([7, 6]),
                    "chunks": [{"offsets": torch.Size(o), "sizes": torch.Size(sz)} for o, sz in layout]},
        "optim.step": {"type": "bytes"}}}

    class Lazy:
        def tensor(self, key):
            return pieces[key].clone()
    chosen, prefix = dcp_select(structure, None)
    assert prefix == "model" and list(chosen) == ["model.w"]
    assert torch.equal(dcp_weights(Lazy(), chosen, prefix)["w"], whole)


# -- ls --where ------------------------------------------------------------------------------------

def test_where_equality_at_the_displayed_precision(tmp_path):
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        for e, acc in enumerate([torch.tensor(0.91).item(), 0.9104, 0.91043, 0.9]):  # float32 0.91 first
            store.save("r", e, {"w": torch.zeros(1)}, {"val_acc": acc})

    def epochs(expr):
        return [r["epoch"] for r in json.loads(ok(run("--store", loc, "--json", "ls", "--where", expr)).stdout)]
    assert epochs("val_acc==0.91") == [0]
    assert epochs("val_acc!=0.91") == [1, 2, 3]
    assert epochs("val_acc>=0.91") == [0, 1, 2] and epochs("val_acc>0.91") == [1, 2]
    assert epochs("val_acc<=0.91") == [0, 3]
    assert epochs("val_acc==0.9104") == [1, 2]  # both shown as 0.9104
    assert epochs("val_acc==0.91043") == [2]  # five digits typed: five compared
    assert epochs("epoch==1") == [1]


# -- objective -------------------------------------------------------------------------------------

def test_objective_declares_and_shows_what_best_means(tmp_path):
    loc = str(tmp_path / "s")
    with CheckpointStore(loc) as store:
        for e, (acc, score) in enumerate([(0.5, 3.0), (0.9, 1.0), (0.7, 2.0)]):
            store.save("r", e, {"w": torch.zeros(1)}, {"val_acc": acc, "score2": score})
    res = ok(run("--store", loc, "objective", "r"))
    assert "declares no objective" in res.stdout and "ckpt objective r METRIC" in res.stdout
    res = ok(run("--store", loc, "objective", "r", "val_acc"))
    assert "objective val_acc (max)" in res.stdout and "r@1" in res.stdout
    assert ok(run("--store", loc, "--json", "show", "best")).stdout.count('"epoch": 1') == 1
    res = ok(run("--store", loc, "objective", "r", "score2", "--min"))
    assert "objective score2 (min)" in res.stdout
    doc = json.loads(ok(run("--store", loc, "objective", "r", "--json")).stdout)
    assert (doc["objective"], doc["mode"], doc["best_value"]) == ("score2", "min", 1.0)
    assert json.loads(ok(run("--store", loc, "--json", "ls", "--sort", "score2")).stdout)[0]["epoch"] == 1
    user_error(run("--store", loc, "objective", "r", "val_acc2"), "records 'val_acc2'", "val_acc, score2")
    user_error(run("--store", loc, "objective", "nosuch", "val_acc"), "no run named 'nosuch'")
    with CheckpointStore(loc) as store:
        store.save("q", 0, {"w": torch.zeros(1)}, {"weird": 1.0})
    user_error(run("--store", loc, "objective", "q", "weird"), "--max or --min")
    ok(run("--store", loc, "objective", "q", "weird", "--max"))
    assert os.path.isdir(loc)


def test_diff_checkpoints_only_reads_and_compares_one_subtree(trained):
    """The core function behind `--only`, for store.diff(a, b, only=...) to pass through."""
    from ckpt.diff import diff_checkpoints, summarize
    with CheckpointStore(trained, readonly=True) as store:
        a, b = store.list(run="mlp")[-2:]
        d = store.diff(a.id, b.id, only="model")
        full = store.diff(a.id, b.id)
    keys = [c.key for c in d.changed] + [k for k, _, _ in d.values] + d.only_a + d.only_b
    assert keys and all(k.startswith("model/") for k in keys)
    assert {c.key for c in d.changed} == {c.key for c in full.changed if c.key.startswith("model/")}
    assert d.metrics == full.metrics and summarize(d) == []
    assert {s.kind for s in summarize(full)} == {"rng", "history", "data order"}
