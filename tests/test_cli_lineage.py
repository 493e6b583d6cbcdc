"""ckpt log / runs / show / diff / plot on a store with branches: a fine-tune and a resumed run."""

import json
import os
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from ckpt import CheckpointStore
from ckpt.cli import cli
from ckpt.cli.graph import layout, topo_newest_first


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def loc(tmp_path_factory):
    """base@0..4; ft@0..2 fine-tuned from base@2 (frozen first layer); resumed@3 from base@3."""
    loc = str(tmp_path_factory.mktemp("lineage") / "s")
    torch.manual_seed(0)
    frozen, head = torch.randn(8, 8), torch.randn(2, 8)
    with CheckpointStore(loc) as store:
        store.set_objective("base", "val_acc", "max")
        for e, acc in enumerate([0.5, 0.6, 0.7, 0.8, 0.75]):
            store.save("base", e, {"model": {"frozen": frozen + e, "head": head + e},
                                   "optimizer": {"param_groups": [{"lr": 0.1 / (e + 1)}]}},
                       {"val_acc": acc, "val_loss": 1 - acc})
        for e in range(3):
            store.save("ft", e, {"model": {"frozen": frozen + 2, "head": head * (e + 10)}}, {"val_acc": 0.7 + e / 20},
                       parent="base@2" if e == 0 else None)
        store.save("resumed", 3, {"model": {"frozen": frozen + 3, "head": head + 3}}, {"val_acc": 0.6},
                   parent="base@3")
        store.tag("base@1", "paper")
        store.finish_run("base", "completed")
        store.finish_run("ft", "failed")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(os.path.join(loc, "index.sqlite")) as db:  # its writer died without finishing
        db.execute("UPDATE runs SET pid = ? WHERE name = 'resumed'", (int(dead.stdout),))
    return loc


def test_log_graph_shows_branches(loc):
    res = run("--store", loc, "log", "--graph")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len([line for line in lines if "@" in line]) == 9
    assert lines[0].startswith("* ") and "resumed@3" in lines[0] and "branched from base@3" in lines[0]
    assert any(line.strip() in ("|/", "|_|/") for line in lines)  # lanes joining at a branch point
    ft0 = next(line for line in lines if "ft@0" in line)
    assert ft0.startswith("| * ") and "branched from base@2" in ft0
    assert lines[-1].startswith("* ") and "base@0" in lines[-1]
    assert "(paper)" in next(line for line in lines if "base@1" in line)
    assert "\x1b[" not in res.output  # no colour when not a terminal


def test_log_of_one_run_includes_its_ancestors(loc):
    res = run("--store", loc, "log", "ft", "--graph")
    names = [next(w for w in line.split() if "@" in w) for line in res.stdout.splitlines() if "@" in line]
    assert names == ["ft@2", "ft@1", "ft@0", "base@2", "base@1", "base@0"]
    doc = json.loads(run("--store", loc, "--json", "log").stdout)
    by = {f"{d['run']}@{d['epoch']}": d for d in doc}
    children = {f"{by_id['run']}@{by_id['epoch']}" for c in by["base@2"]["children"]
                for by_id in doc if by_id["id"] == c}
    assert children == {"base@3", "ft@0"}
    table = run("--store", loc, "log", "--limit", "3").stdout.splitlines()
    assert len(table) == 4 and "resumed" in table[1] and "(base@3)" in table[1]
    assert run("--store", loc, "log", "nosuchrun").exit_code == 2


def test_graph_layout_lanes():
    n = lambda i, p=None: SimpleNamespace(id=i, parent=p)  # noqa: E731
    # oldest first: a <- b <- c, b <- d (branch), e separate root; d is older than c
    nodes = topo_newest_first([n("a"), n("b", "a"), n("d", "b"), n("e"), n("c", "b")])
    assert [x.id for x in nodes] == ["c", "e", "d", "b", "a"]
    rows = [(text, node.id if node else None) for text, node in layout(nodes)]
    assert rows == [("*", "c"), ("| *", "e"), ("| *", "d"), ("|/", None), ("*", "b"), ("*", "a")]
    # a lane ends at a root while another continues; the right lane moves left
    nodes = topo_newest_first([n("a"), n("b", "a"), n("x"), n("y", "a"), n("z", "b")])
    assert [t for t, _ in layout(nodes)] == ["*", "| *", "| | *", "* |", "|/", "*"]
    # a far lane joins its parent's lane across a lane still waiting for an older checkpoint
    nodes = topo_newest_first([n("p"), n("a"), n("b", "a"), n("c", "p"), n("d", "a")])
    assert [t for t, _ in layout(nodes)] == ["*", "| *", "| | *", "|_|/", "* |", " /", "*"]


def test_runs_status_objective_best(loc):
    res = run("--store", loc, "--json", "runs")
    runs = {r["name"]: r for r in json.loads(res.stdout)}
    assert runs["base"]["status"] == "completed" and runs["base"]["objective"] == "val_acc"
    assert runs["base"]["best_value"] == 0.8 and runs["base"]["latest_epoch"] == 4
    assert runs["ft"]["status"] == "failed" and runs["ft"]["checkpoints"] == 3
    assert runs["resumed"]["status"] == "crashed"
    table = run("--store", loc, "runs").stdout
    assert "val_acc (max)" in table and "crashed" in table
    only = run("--store", loc, "runs", "--status", "crashed", "--json").stdout
    assert [r["name"] for r in json.loads(only)] == ["resumed"]


def test_show_lineage_children_and_sharing(loc):
    res = run("--store", loc, "show", "ft@0")
    assert res.exit_code == 0
    out = res.stdout
    assert "lineage     ft@0 <- base@2 <- base@1 <- base@0" in out
    assert "(base@2)" in out.splitlines()[3]  # parent
    assert "(ft@1)" in out and "identical to its parent" in out
    doc = json.loads(run("--store", loc, "show", "ft@0", "--json").stdout)
    assert doc["shared_with_parent_tensors"] == 1 and doc["shared_with_parent_bytes"] == 8 * 8 * 4
    assert len(doc["ancestors"]) == 3 and len(doc["children"]) == 1


def test_diff_text_and_json(loc):
    res = run("--store", loc, "diff", "base@1", "ft@0")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "val_acc" in out and "+0.1" in out
    assert "changed tensors (2" in out and "identical tensors: 0" in out
    assert "optimizer/param_groups/0/lr: 0.05 -> (absent)" in out
    doc = json.loads(run("--store", loc, "diff", "base@2", "ft@0", "--json").stdout)
    assert doc["identical"] == 1 and [c["key"] for c in doc["changed"]] == ["model/head"]
    assert doc["changed"][0]["max_abs_diff"] > 0 and doc["changed"][0]["rel_l2"] > 0
    assert doc["metrics"]["val_acc"]["delta"] == pytest.approx(0.0)
    doc = json.loads(run("--store", loc, "--json", "diff", "base@0", "base@1").stdout)
    assert doc["values"] == [{"key": "optimizer/param_groups/0/lr", "a": 0.1, "b": 0.05}]
    assert doc["metrics"]["val_loss"]["delta"] == pytest.approx(-0.1)
    top = run("--store", loc, "diff", "base@0", "base@4", "--top", "1").stdout
    assert "1 more not shown" in top


def test_plot_marks_each_runs_best(loc, tmp_path):
    out = tmp_path / "curve.png"
    res = run("--store", loc, "plot", "val_acc", "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    series = {s["run"]: s for s in json.loads(res.stdout)["series"]}
    assert series["base"]["best"]["x"] == 3 and series["base"]["best"]["y"] == 0.8
    assert series["ft"]["best"]["x"] == 2 and series["base"]["x"] == [0, 1, 2, 3, 4]
    res = run("--store", loc, "plot", "val_loss", "--run", "base", "-o", str(tmp_path / "loss.svg"))
    assert res.exit_code == 0 and "best: base 0.2 at epoch 3" in res.stdout
    assert (tmp_path / "loss.svg").read_text().lstrip().startswith("<?xml")
    res = run("--store", loc, "plot", "nosuch", "-o", str(tmp_path / "x.png"))
    assert res.exit_code == 2 and "no checkpoint has metric 'nosuch'" in res.stderr
