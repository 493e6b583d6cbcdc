"""Retention keeps what matters (tags, latest, best, branch points) and frees what it says it frees."""

import pytest
import torch

from ckpt import InvalidArgumentError, MetricDirectionError


def _fill(store, accs, run="r"):
    for e, acc in enumerate(accs):
        store.save(run, e, {"w": torch.full((4096,), float(e) + 100 * len(run))}, {"val_acc": acc})


def test_keep_last_and_best_and_latest(store):
    _fill(store, [0.1, 0.9, 0.2, 0.3, 0.4, 0.5])
    plan = store.prune(keep_last=2, dry_run=True)
    assert sorted(i.epoch for i in plan.keep) == [1, 4, 5]  # best (epoch 1) survives rotation
    assert "best by val_acc" in plan.reasons[store.get("r@1").id] and plan.bytes_freed > 3 * 4096 * 4
    assert len(store.list()) == 6  # dry run removed nothing
    before = sum(e.size for e in store.storage.list("packs"))
    done = store.prune(keep_last=2)
    assert sorted(i.epoch for i in store.list()) == [1, 4, 5]
    assert before - sum(e.size for e in store.storage.list("packs")) == done.bytes_freed
    assert store.verify().ok


def test_tags_keep_every_and_keep_best(store):
    _fill(store, [0.1, 0.9, 0.2, 0.3, 0.8, 0.5, 0.6])
    store.tag("r@2", "paper")
    store.prune(keep_last=1, keep_every=3, keep_best=2)
    assert sorted(i.epoch for i in store.list()) == [0, 1, 2, 3, 4, 6]


def test_branch_points_of_other_runs_are_kept(store):
    _fill(store, [0.1, 0.2, 0.3])
    store.save("finetune", 0, {"w": torch.zeros(3)}, {"val_acc": 0.5}, parent="r@0")
    store.prune(keep_last=1, run="r")
    assert sorted(i.epoch for i in store.list(run="r")) == [0, 2]


def test_policy_errors(store):
    store.save("r", 0, {"w": torch.zeros(1)}, {"custom": 1.0})
    with pytest.raises(InvalidArgumentError):
        store.prune()
    with pytest.raises(InvalidArgumentError):
        store.prune(keep_last=-1)
    with pytest.raises(MetricDirectionError):
        store.prune(keep_best=1)
    assert len(store.prune(keep_best=1, metric="custom", mode="min").keep) == 1
