"""One selector grammar: latest, best, best:METRIC, RUN@EPOCH, RUN:latest, RUN:best:M, tags, ids, ~N."""

import math

import pytest
import torch

from ckpt import (AmbiguousSelectorError, CheckpointNotFoundError, DuplicateCheckpointError,
                  InvalidArgumentError, MetricDirectionError, SelectorError)
from ckpt.metrics import infer_mode


@pytest.fixture
def filled(store):
    for e, (acc, loss) in enumerate([(0.5, 1.0), (0.8, 0.6), (math.nan, 0.4), (0.7, 0.5)]):
        store.save("a", e, {"w": torch.full((4,), float(e))}, {"val_acc": acc, "val_loss": loss})
    for e, acc in enumerate([0.6, 0.9]):
        store.save("b", e, {"w": torch.full((4,), 10.0 + e)}, {"val_acc": acc, "custom": e})
    return store


def test_latest_and_run_forms(filled):
    assert (filled.get("latest").run, filled.get("latest").epoch) == ("b", 1)
    assert filled.get("a:latest").epoch == 3
    assert filled.get("latest", run="a").epoch == 3
    assert filled.get("a").epoch == 3  # a bare run name means its latest
    assert filled.get("a@1").epoch == 1
    assert filled.latest("a").epoch == 3


def test_best_follows_metric_direction_and_nan_never_wins(filled):
    assert (filled.get("best:val_acc").run, filled.get("best:val_acc").epoch) == ("b", 1)
    assert filled.get("a:best:val_acc").epoch == 1  # NaN at epoch 2 is skipped
    assert filled.get("a:best:val_loss").epoch == 2  # lower is better for a loss
    assert filled.best("val_loss", run="a").epoch == 2
    assert filled.best("val_loss", mode="max", run="a").epoch == 0


def test_declared_objective_and_unknown_direction(filled):
    with pytest.raises(MetricDirectionError, match="set_objective"):
        filled.get("best:custom")
    with pytest.raises(MetricDirectionError):
        filled.get("best")
    filled.set_objective("b", "custom", "min")
    assert filled.get("best:custom").epoch == 0
    assert filled.get("b:best").epoch == 0
    assert filled.get("best").epoch == 0  # the only declared objective
    assert [i.epoch for i in filled.list(run="b", sort="custom")] == [0, 1]


def test_lineage_steps_back(filled):
    assert filled.get("a:latest~1").epoch == 2
    assert filled.get("a@3~3").epoch == 0
    with pytest.raises(CheckpointNotFoundError, match="lineage ends"):
        filled.get("a@3~4")


def test_id_prefix_and_tags(filled):
    info = filled.get("a@1")
    assert filled.get(info.id[:8]).id == info.id
    assert filled.get(info.id.upper()[:10]).id == info.id
    with pytest.raises(CheckpointNotFoundError, match="6 hex"):
        filled.get(info.id[:4])
    filled.tag("a@1", "release")
    assert filled.get("release").id == info.id
    assert filled.get("release").tags == ("release",)
    filled.tag("a@2", "release")  # tags move, like aliases
    assert filled.get("release").epoch == 2
    filled.untag("release")
    with pytest.raises(CheckpointNotFoundError):
        filled.get("release")


def test_every_six_char_prefix_resolves(store):
    ids = []
    for e in range(40):
        ids.append(store.save("x", e, {"w": torch.tensor(e)}).id)
    by_prefix = {}
    for i in ids:
        by_prefix.setdefault(i[:6], []).append(i)
    # No accidental collisions: every 6-char prefix resolves to its id.
    for p, group in by_prefix.items():
        if len(group) == 1:
            assert store.get(p).id == group[0]
        else:  # pragma: no cover - astronomically rare
            with pytest.raises(AmbiguousSelectorError):
                store.get(p)


def test_ambiguous_prefix_error(store, monkeypatch):
    import uuid
    # Each save draws a checkpoint id, then a pack id.
    fixed = iter(["abcdef00000000000000000000000000", uuid.uuid4().hex,
                  "abcdef00000000000000000000000001", uuid.uuid4().hex])
    monkeypatch.setattr("ckpt.commit.uuid.uuid4", lambda: type("U", (), {"hex": next(fixed)})())
    store.save("x", 0, {"w": torch.tensor(0)})
    store.save("x", 1, {"w": torch.tensor(1)})
    with pytest.raises(AmbiguousSelectorError) as exc:
        store.get("abcdef")
    assert len(exc.value.candidates) == 2 and "abcdef" in str(exc.value)


@pytest.mark.parametrize("bad", ["", "   ", "nope", "a@x", "~1", "zzz@1"])
def test_bad_selectors_raise_typed_errors(filled, bad):
    with pytest.raises(SelectorError):
        filled.get(bad)


def test_duplicate_epoch_is_refused_and_first_kept(filled):
    with pytest.raises(DuplicateCheckpointError, match="a@1"):
        filled.save("a", 1, {"w": torch.zeros(4)})
    assert torch.equal(filled.load("a@1")["w"], torch.full((4,), 1.0))
    filled.save("a", 1, {"w": torch.zeros(4)}, step=500)  # a mid-epoch step is a different checkpoint
    assert filled.get("a@1").step is None  # RUN@EPOCH prefers the epoch-end checkpoint
    filled.save("a", 7, {"w": torch.zeros(4)}, step=700)
    filled.save("a", 7, {"w": torch.zeros(4)}, step=750)
    assert filled.get("a@7").step == 750  # else the epoch's last step
    assert [i.step for i in filled.list(run="a", sort="epoch") if i.epoch == 1] == [500, None]


@pytest.mark.parametrize("run", ["", "x@y", "latest", "a~2", "bad\0name", "r:best", 5, "  pad"])
def test_bad_run_names_are_refused(store, run):
    with pytest.raises(InvalidArgumentError):
        store.save(run, 0, {"w": torch.zeros(1)})


def test_bad_metrics_and_epochs_are_refused(store):
    with pytest.raises(InvalidArgumentError):
        store.save("r", 0, {}, {"acc": "high"})
    with pytest.raises(InvalidArgumentError):
        store.save("r", 1.5, {})
    info = store.save("r", 0, {}, {"acc": torch.tensor(0.5), "n": 3})
    assert info.metrics == {"acc": 0.5, "n": 3.0}


@pytest.mark.parametrize("name,mode", [("val_acc", "max"), ("top1-accuracy", "max"), ("eval/loss", "min"),
                                       ("wer", "min"), ("val_f1", "max"), ("perplexity", "min"),
                                       ("mIoU", None), ("iou", "max"), ("lr", None)])
def test_direction_table(name, mode):
    assert infer_mode(name) == mode


def test_variants_at_one_step_prefer_the_ordinary_checkpoint(store):
    import torch
    full = store.save("v", 1, {"w": torch.ones(2), "opt": torch.zeros(2)}, step=10)
    weights = store.save("v", 1, {"w": torch.ones(2)}, step=10, variant="weights")
    assert weights.variant == "weights" and weights.id != full.id
    assert store.get("v:latest").id == full.id and store.get("latest").id == full.id
    assert store.get("v@1").id == full.id
    with pytest.raises(DuplicateCheckpointError):
        store.save("v", 1, {"w": torch.ones(2)}, step=10, variant="weights")
    assert [i.variant for i in store.list(run="v")] == ["", "weights"]
