"""ckpt ls --where, tag, untag, rm, prune, gc, verify --json: changing a real store from the command line."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from ckpt import CheckpointStore
from ckpt.cli import cli
from ckpt.cli.where import WhereError, parse


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """run a: epochs 0..5, each with its own 4 KiB of weights and a shared frozen tensor; run b: 2 epochs."""
    loc = str(tmp_path_factory.mktemp("manage") / "s")
    frozen = torch.randn(256)
    with CheckpointStore(loc) as store:
        for e, acc in enumerate([0.5, 0.9, 0.7, 0.95, 0.6, float("nan")]):
            store.save("a", e, {"model": {"frozen": frozen, "w": torch.full((1024,), float(e))}},
                       {"val_acc": acc, "loss": 1.0 - e / 10}, step=e * 100)
        for e in range(2):
            store.save("b", e, {"model": {"w": torch.full((8,), -float(e))}}, {"val_acc": 0.3 + e / 10})
    return loc


@pytest.fixture
def loc(template, tmp_path):
    """A fresh copy of the template store for each test (saving it anew would cost more)."""
    shutil.copytree(template, tmp_path / "s")
    return str(tmp_path / "s")


def epochs(res):
    assert res.exit_code == 0, res.output
    return [(r["run"], r["epoch"]) for r in json.loads(res.stdout)]


def test_ls_where_filters(loc):
    assert epochs(run("--store", loc, "ls", "--json", "--where", "val_acc>0.8")) == [("a", 1), ("a", 3)]
    assert epochs(run("--store", loc, "--json", "ls", "--where", "val_acc>=0.5,epoch<3", "--run", "a")) == \
        [("a", 0), ("a", 1), ("a", 2)]
    assert epochs(run("--store", loc, "--json", "ls", "--where", "val_acc < 0.6", "--where", "step!=0")) == []
    assert epochs(run("--store", loc, "--json", "ls", "--where", "val_acc<0.6")) == [("a", 0), ("b", 0), ("b", 1)]
    assert epochs(run("--store", loc, "--json", "ls", "--where", "val_acc==0.9")) == [("a", 1)]
    assert epochs(run("--store", loc, "--json", "ls", "--where", "loss<=0.6", "--sort", "loss")) == [("a", 5), ("a", 4)]
    # NaN never matches, not even !=; --limit applies after filtering
    assert ("a", 5) not in epochs(run("--store", loc, "--json", "ls", "--where", "val_acc!=0.5"))
    assert epochs(run("--store", loc, "--json", "ls", "--where", "val_acc>0.4", "--sort", "val_acc",
                      "--limit", "2")) == [("a", 3), ("a", 1)]
    res = run("--store", loc, "ls", "--where", "val_acc>0.99")
    assert res.exit_code == 0 and res.stdout == "" and "no checkpoints match" in res.stderr


@pytest.mark.parametrize("expr", ["val_acc", "val_acc>>1", "val_acc>high", "__import__('os')>1", ">1",
                                  "val_acc>nan", "val_acc>1,", "val_accc>0.5"])
def test_where_grammar_rejects_everything_else(loc, expr):
    res = run("--store", loc, "ls", "--where", expr)
    assert res.exit_code == 2 and res.stderr.startswith("error: --where:") and len(res.stderr.splitlines()) == 1
    if expr.startswith(("__", "val_accc")):  # well formed, but no such metric: a name, never code
        assert "no checkpoint has a metric named" in res.stderr
    else:
        with pytest.raises(WhereError):
            parse([expr])


def test_where_parse():
    (c,) = parse(["  top1-acc >= -1e-3 "])
    assert (c.name, c.op, c.value) == ("top1-acc", ">=", -0.001)
    assert [str(c) for c in parse(["a>1,b<=2", "c!=3"])] == ["a>1", "b<=2", "c!=3"]


def test_tag_untag(loc):
    res = run("--store", loc, "tag", "a@1", "keep-me")
    assert res.exit_code == 0 and "as keep-me" in res.stdout and "(a@1 step 100)" in res.stdout
    res = run("--store", loc, "tag", "best:val_acc", "keep-me")
    assert "moved from" in res.stdout and "(a@1 step 100)" in res.stdout.split("moved from")[1]
    assert epochs(run("--store", loc, "--json", "ls", "--tag", "keep-me")) == [("a", 3)]
    res = run("--store", loc, "tag", "a@1", "best")
    assert res.exit_code == 2 and "ambiguous" in res.stderr
    res = run("--store", loc, "untag", "keep-me", "nosuch")
    assert res.exit_code == 2 and "no tag named 'nosuch'" in res.stderr
    assert epochs(run("--store", loc, "--json", "ls", "--tag", "keep-me")) == [("a", 3)]  # nothing removed
    assert run("--store", loc, "untag", "keep-me").exit_code == 0
    assert epochs(run("--store", loc, "--json", "ls", "--tag", "keep-me")) == []


def test_rm_resolves_everything_first_and_protects_tags(loc):
    run("--store", loc, "tag", "a@2", "pinned")
    res = run("--store", loc, "rm", "a@0", "a@99")
    assert res.exit_code == 2 and "epoch 99" in res.stderr
    res = run("--store", loc, "rm", "a@0", "pinned")
    assert res.exit_code == 2 and "refusing to remove tagged" in res.stderr and "pinned" in res.stderr
    assert len(epochs(run("--store", loc, "--json", "ls"))) == 8
    res = run("--store", loc, "rm", "a@0", "a@0", "b")
    assert res.exit_code == 0 and res.stdout.count("removed") == 2 and "freed" in res.stderr
    res = run("--store", loc, "--json", "rm", "pinned", "--force")
    assert [d["epoch"] for d in json.loads(res.stdout)] == [2]
    assert epochs(run("--store", loc, "--json", "ls")) == [("a", 1), ("a", 3), ("a", 4), ("a", 5), ("b", 0)]
    # rm freed the packs only the removed checkpoints used; a@0's pack also holds the frozen tensor
    # that later checkpoints use, so it stays and gc finds nothing to take
    dry = json.loads(run("--store", loc, "--json", "gc", "--dry-run", "--grace", "0").stdout)
    assert dry["packs"] == []
    assert run("--store", loc, "verify", "--full").exit_code == 0
    with CheckpointStore(loc, readonly=True) as store:
        assert store.load("a@1")["model"]["w"][0] == 1.0


def test_prune_dry_run_then_for_real(loc):
    res = run("--store", loc, "prune", "--keep-last", "1", "--keep-best", "1:val_acc", "--dry-run")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "would remove 5 of 8 checkpoint(s), would free" in out and "dry run: nothing changed" in out
    assert "best by val_acc" in out and "latest" in out
    assert len(epochs(run("--store", loc, "--json", "ls"))) == 8
    doc = json.loads(run("--store", loc, "--json", "prune", "--keep-last", "1", "--keep-best", "1:val_acc",
                         "--run", "a").stdout)
    assert not doc["dry_run"] and [r["epoch"] for r in doc["removed"]] == [0, 1, 2, 4]
    assert doc["bytes_freed"] >= 3 * 4096  # a@0's pack also holds the frozen tensor the others use
    kept = {r["epoch"]: r["reasons"] for r in doc["kept"]}
    assert set(kept) == {3, 5} and "best by val_acc" in kept[3] and "latest" in kept[5]
    assert epochs(run("--store", loc, "--json", "ls")) == [("a", 3), ("a", 5), ("b", 0), ("b", 1)]
    assert run("--store", loc, "verify", "--full").exit_code == 0


def test_prune_option_errors(loc):
    res = run("--store", loc, "prune", "--dry-run")
    assert res.exit_code == 2 and "say what to keep" in res.stderr
    res = run("--store", loc, "prune", "--keep-best", "x:val_acc")
    assert res.exit_code == 2 and "K:METRIC" in res.stderr
    res = run("--store", loc, "prune", "--keep-best", "2:", "--dry-run")
    assert res.exit_code == 2 and "metric after ':' is missing" in res.stderr
    res = run("--store", loc, "prune", "--keep-last", "1", "--run", "nosuch", "--dry-run")
    assert res.exit_code == 2 and "no run named 'nosuch'" in res.stderr
    res = run("--store", loc, "prune", "--keep-every", "0")
    assert res.exit_code == 2 and "--keep-every" in res.stderr and len(res.stderr.splitlines()) == 1


def test_verify_json_and_reindex(loc):
    doc = json.loads(run("--store", loc, "verify", "--json").stdout)
    assert doc["ok"] and doc["checkpoints"] == 8 and doc["problems"] == []
    doc = json.loads(run("--store", loc, "--json", "reindex").stdout)
    assert doc == {"checkpoints": 8}
