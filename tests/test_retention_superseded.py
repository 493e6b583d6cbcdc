"""Step checkpoints superseded by their epoch's end go first and count toward no policy; latest, best,
tags and branch points stay whatever the policy."""

from datetime import datetime, timedelta, timezone

import pytest
import torch

from ckpt import CheckpointStore
from ckpt.records import CheckpointInfo
from ckpt.retention import RetentionPolicy, plan, superseded

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
STEPS = 38  # batches per epoch in the demo; a step checkpoint every 20 steps


def info(n, epoch, step, metrics=None, run="r", tags=()):
    return CheckpointInfo(id=f"{run}-{n:04d}", run=run, epoch=epoch, step=step, metrics=dict(metrics or {}),
                          content_hash="", parent=None, created_at=T0 + timedelta(seconds=n), logical_size=1,
                          new_bytes=1, tags=tuple(tags))


def demo(epochs=8, run="r", every=20, tags_at=None):
    """What fit(save_every_steps=20) writes: metric-less step checkpoints, an evaluated epoch end."""
    out = []
    for e in range(epochs):
        for step in range(every, STEPS * (e + 1), every):
            if step > STEPS * e:
                out.append(info(len(out), e, step, run=run))
        out.append(info(len(out), e, STEPS * (e + 1), {"val_loss": 1 - e / 10, "val_acc": 0.5 + e / 20}, run=run,
                        tags=("paper",) if tags_at == e else ()))
    return out


def kept(result):
    return sorted(((i.epoch, i.step) for i in result.keep),
                  key=lambda k: (k[0], float("inf") if k[1] is None else k[1]))


def decide(infos, **policy):
    return plan({infos[0].run: infos}, {}, RetentionPolicy(**policy), {})


def test_the_demo_keeps_three_epoch_ends_not_three_step_checkpoints():
    infos = demo()
    result = decide(infos, keep_last=3)
    assert kept(result) == [(5, 228), (6, 266), (7, 304)]  # not 7@280, 7@300, 7@304
    why = result.removed_reasons
    by = {(i.epoch, i.step): i.id for i in infos}
    assert why[by[7, 280]] == why[by[7, 300]] == "superseded by step 304"
    assert why[by[4, 190]] == "not in last 3"
    assert result.reasons[by[7, 304]][:2] == ["latest", "last 3"]
    assert "best by val_acc" in result.reasons[by[7, 304]]


def test_best_outside_the_last_n_stays_and_superseded_steps_do_not_count_for_keep_every():
    infos = demo()
    infos[8] = info(8, 3, 152, {"val_loss": 0.01, "val_acc": 0.99})  # epoch 3's end is the best
    assert (infos[8].epoch, infos[8].step) == (3, 152)
    result = decide(infos, keep_last=2, keep_every=2)
    assert kept(result) == [(0, 38), (2, 114), (3, 152), (4, 190), (6, 266), (7, 304)]
    assert all(i.step == STEPS * (i.epoch + 1) for i in result.keep)  # no step checkpoint kept by keep_every


def test_an_epoch_in_progress_keeps_three_ends_and_its_newest_resume_point():
    infos = demo(epochs=7)
    infos += [info(len(infos), 7, 280), info(len(infos) + 1, 7, 300)]  # epoch 7 not finished yet
    result = decide(infos, keep_last=3)
    assert kept(result) == [(4, 190), (5, 228), (6, 266), (7, 300)]
    by = {(i.epoch, i.step): i.id for i in infos}
    assert result.removed_reasons[by[7, 280]] == "superseded by step 300"
    assert result.reasons[by[7, 300]] == ["latest"]  # kept as the resume point, not as one of the last 3


def test_a_step_less_epoch_end_supersedes_every_step_checkpoint_of_its_epoch():
    infos = [info(0, 0, 10, {"val_acc": 0.1}), info(1, 0, 20, {"val_acc": 0.2}), info(2, 0, None, {"val_acc": 0.3}),
             info(3, 1, 30, {"val_acc": 0.4}), info(4, 1, None, {"val_acc": 0.35})]
    assert set(superseded(infos)) == {"r-0000", "r-0001", "r-0003"}
    result = decide(infos, keep_last=1)
    assert kept(result) == [(1, 30), (1, None)]  # 1@30 stays only as the best by val_acc
    assert result.reasons["r-0003"] == ["best by val_acc"]
    assert result.removed_reasons["r-0000"] == "superseded by the epoch's end"


def test_evaluated_step_checkpoints_are_results_not_resume_points():
    """A Trainer evaluating every 100 steps: each step checkpoint has metrics; none supersedes another."""
    infos = [info(n, n // 3, 100 * (n + 1), {"eval_loss": 1 / (n + 1)}) for n in range(9)]
    assert superseded(infos) == {}
    assert kept(decide(infos, keep_last=3)) == [(2, 700), (2, 800), (2, 900)]


def test_a_loop_saving_only_step_checkpoints_keeps_its_last_n_of_the_current_epoch():
    """No metrics and no step-less checkpoints: nothing marks an epoch's end but a later epoch."""
    infos = [info(n, n // 4, 10 * (n + 1)) for n in range(10)]  # epochs 0, 1 (4 each) and 2 (2 so far)
    assert set(superseded(infos)) == {"r-0000", "r-0001", "r-0002", "r-0004", "r-0005", "r-0006"}
    assert kept(decide(infos, keep_last=3)) == [(1, 80), (2, 90), (2, 100)]


def test_tags_branch_points_and_latest_protect_superseded_checkpoints():
    infos = demo(epochs=3)
    step = next(i for i in infos if i.epoch == 1 and i.step == 60)
    tagged = info(100, 0, 20, tags=("keepme",))
    infos = [tagged if (i.epoch, i.step) == (0, 20) else i for i in infos]
    result = plan({"r": infos}, {}, RetentionPolicy(keep_last=1), {step.id: "finetune"})
    assert (0, 20) in kept(result) and (1, 60) in kept(result)
    assert result.reasons[step.id] == ["branch point of run 'finetune'"]
    assert result.reasons[tagged.id] == ["tagged keepme"]


def test_prune_through_the_store_end_to_end(tmp_path):
    with CheckpointStore(tmp_path / "s") as store:
        for i in demo(epochs=5):
            store.save("r", i.epoch, {"w": torch.full((256,), float(i.step))}, i.metrics, step=i.step)
        store.save("other", 0, {"w": torch.zeros(3)}, {"val_acc": 0.1}, step=20)
        dry = store.prune(keep_last=3, dry_run=True)
        assert sorted((i.run, i.epoch, i.step) for i in dry.keep) == \
            [("other", 0, 20), ("r", 2, 114), ("r", 3, 152), ("r", 4, 190)]
        assert any(r.startswith("superseded by step") for r in dry.removed_reasons.values())
        done = store.prune(keep_last=3)
        assert [(i.epoch, i.step) for i in store.list(run="r")] == [(2, 114), (3, 152), (4, 190)]
        assert done.bytes_freed > 0 and store.verify().ok
        assert store.get("r:latest").step == 190 and store.get("best:val_acc").epoch == 4


def test_the_demo_through_fit_keeps_three_epoch_ends(tmp_path):
    """fit(save_every_steps=20, retention=dict(keep_last=3)) prunes after every save, mid-epoch too."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from ckpt.training import fit, seed_everything
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(304, 4, generator=g)
    y = (x.sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = nn.Linear(4, 2)

    def evaluate(m):
        return {"val_loss": nn.functional.cross_entropy(m(x), y).item()}
    fit(model, torch.optim.SGD(model.parameters(), lr=0.05), loader, evaluate, store=str(tmp_path / "s"), run="demo",
        max_epochs=6, monitor="val_loss", save_every_steps=20, retention=dict(keep_last=3), verbose=False)
    with CheckpointStore(tmp_path / "s", readonly=True) as store:
        left = [(i.epoch, i.step) for i in store.list(run="demo")]
        best = store.best(run="demo")
    ends = [(e, STEPS * (e + 1)) for e in range(6)]
    assert left[-3:] == ends[-3:]
    assert set(left) <= set(ends) and set(left) - set(ends[-3:]) <= {(best.epoch, best.step)}


@pytest.mark.parametrize("policy", [dict(keep_last=0), dict(keep_every=1), dict(keep_last=5)])
def test_resume_points_of_the_epoch_in_progress(policy):
    """The newest resume point stays as the latest; the older one is superseded whatever the policy."""
    infos = [info(0, 0, 38, {"val_loss": 1.0}), info(1, 1, 58), info(2, 1, 78)]
    result = decide(infos, **policy)
    assert kept(result) == [(0, 38), (1, 78)]
    assert result.removed_reasons["r-0001"] == "superseded by step 78"
