"""Re-running an edited script never silently resumes the old run; fit's options; save every N epochs.

Each test trains a tiny model with fit() for real, on a store in a temporary folder.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore, InvalidArgumentError
from ckpt.training import DataSplit, RunMismatchError, fit

from test_training import _isolated_torch, fast_tmp  # noqa: F401


class Steps:
    """Counts optimizer steps and remembers the learning rate each one used."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_step_end(self, trainer) -> None:  # type: ignore[no-untyped-def]
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def setup(*, lr: float = 0.01, hidden: int = 8, batch_size: int = 8, scheduler: bool = False):  # type: ignore[no-untyped-def]
    """A fresh script run: data, model, optimizer (and scheduler) built anew, as a new process would."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_loss": nn.functional.cross_entropy(m(x), y).item()}

    return model, opt, loader, evaluate, sched


def train(store, *, max_epochs: int, run: str = "r", callbacks=(), **kw):  # type: ignore[no-untyped-def]
    setup_kw = {k: kw.pop(k) for k in ("lr", "hidden", "batch_size", "scheduler") if k in kw}
    model, opt, loader, evaluate, sched = setup(**setup_kw)
    result = fit(model, opt, loader, evaluate, store=store, run=run, max_epochs=max_epochs, monitor="val_loss",
                 patience=kw.pop("patience", None), scheduler=sched, verbose=kw.pop("verbose", False),
                 progress=False, callbacks=list(callbacks), **kw)
    return result, model, opt


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- item 5: the guard -----------------------------------------------------------------------------------
def test_changed_learning_rate_stops_before_training_and_names_the_change(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    train(store, max_epochs=2, lr=0.01)
    n = len(store.list(run="r"))
    steps = Steps()
    model, opt, loader, evaluate, _ = setup(lr=0.5)
    before = weights(model)
    with pytest.raises(RunMismatchError) as err:
        fit(model, opt, loader, evaluate, store=store, run="r", max_epochs=4, monitor="val_loss", patience=None,
            verbose=False, progress=False, callbacks=[steps])
    msg = str(err.value)
    assert "optimizer lr: 0.01 -> 0.5" in msg
    assert "run='r-2'" in msg and "allow_changes=True" in msg  # the ways forward
    assert isinstance(err.value, InvalidArgumentError)
    assert [str(c) for c in err.value.changes] == ["optimizer lr: 0.01 -> 0.5"]
    assert steps.lrs == [] and len(store.list(run="r")) == n  # nothing trained, nothing saved
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    assert opt.param_groups[0]["lr"] == 0.5


def test_other_changes_are_named_too(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    train(store, max_epochs=1)
    with pytest.raises(RunMismatchError) as err:
        train(store, max_epochs=3, batch_size=16, patience=4, loss_fn=nn.functional.nll_loss)
    text = str(err.value)
    assert "data batch_size: 8 -> 16" in text and "data batches_per_epoch: 6 -> 3" in text
    assert "fit patience: None -> 4" in text
    assert "fit loss_fn: torch.nn.functional.cross_entropy -> torch.nn.functional.nll_loss" in text


def test_changed_architecture_is_a_clear_error_not_a_size_mismatch(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    train(store, max_epochs=2, hidden=8)
    for allow in (False, True):
        with pytest.raises(RunMismatchError) as err:
            train(store, max_epochs=3, hidden=16, allow_changes=allow)
        msg = str(err.value)
        assert "model 0.weight shape: (8, 4) -> (16, 4)" in msg and "model 2.weight shape: (2, 8) -> (2, 16)" in msg
        assert "size mismatch" not in msg and "load_pretrained" in msg
        assert "cannot be loaded into this setup" in msg
    assert len(store.list(run="r")) == 2


def test_completed_run_says_so_and_trains_nothing(fast_tmp, capsys):
    store = CheckpointStore(fast_tmp / "s")
    first, _, _ = train(store, max_epochs=2)
    n = len(store.list(run="r"))
    steps = Steps()
    again, model, _ = train(store, max_epochs=2, callbacks=[steps], verbose=True)
    out = capsys.readouterr().out
    assert again.already_complete and not first.already_complete
    assert again.stop_reason == "max_epochs" and again.epochs == 2
    assert steps.lrs == [] and len(store.list(run="r")) == n
    assert "run 'r' is already complete" in out and "raise max_epochs" in out and "resuming" not in out
    best = store.load(f"r@{again.best.epoch}", key="model")
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())  # its best weights, at once
    # Raising max_epochs continues it: not a change of the run's definition.
    more, _, _ = train(store, max_epochs=3, callbacks=[steps])
    assert not more.already_complete and more.epochs == 3 and len(steps.lrs) == 6


def test_allow_changes_applies_and_records_the_change(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    train(store, max_epochs=2, lr=0.01)
    resumed_from = store.latest("r")
    steps = Steps()
    result, _, _ = train(store, max_epochs=3, lr=0.5, allow_changes=True, callbacks=[steps])
    assert result.changes == ("optimizer lr: 0.01 -> 0.5",)
    assert steps.lrs and set(steps.lrs) == {0.5}  # the new rate is what trained, not the saved 0.01
    latest = store.latest("r")
    assert latest.epoch == 2 and latest.parent == resumed_from.id  # lineage: continues from it
    config = store.load("r:latest", key="run_config")
    assert config["optimizer"]["groups"][0]["lr"] == 0.5
    assert config["changes"] == [{"checkpoint": resumed_from.id, "run": "r", "epoch": 1, "step": resumed_from.step,
                                  "changes": ["optimizer lr: 0.01 -> 0.5"]}]
    # From now on 0.5 is the run's definition: the same script continues without allow_changes...
    result, _, _ = train(store, max_epochs=4, lr=0.5)
    assert result.epochs == 4 and result.changes == ()
    assert len(store.load("r:latest", key="run_config")["changes"]) == 1  # ...and the record travels on
    # ...and going back to 0.01 is a change again.
    with pytest.raises(RunMismatchError, match=r"optimizer lr: 0.5 -> 0.01"):
        train(store, max_epochs=5, lr=0.01)


def test_allow_changes_with_larger_patience_continues_an_early_stopped_run(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    model, opt, loader, _, _ = setup()
    values = iter([1.0, 2.0, 3.0, 4.0, 0.5, 0.6])
    kw = dict(store=store, run="r", max_epochs=6, monitor="val_loss", progress=False, verbose=False,
              sanity_check=False)
    first = fit(model, opt, loader, lambda m: {"val_loss": next(values)}, patience=1, **kw)
    assert first.stop_reason == "early_stopping" and first.epochs == 2
    model, opt, loader, _, _ = setup()
    again = fit(model, opt, loader, lambda m: {"val_loss": next(values)}, patience=1, **kw)
    assert again.already_complete
    model, opt, loader, _, _ = setup()
    more = fit(model, opt, loader, lambda m: {"val_loss": next(values)}, patience=4, allow_changes=True, **kw)
    assert more.changes == ("fit patience: 1 -> 4",)
    assert not more.already_complete and more.stop_reason == "max_epochs" and more.epochs == 6
    assert more.best.metrics["val_loss"] == 0.5


def test_same_objects_again_in_one_process_is_not_a_change(fast_tmp):
    """A notebook calls fit again with the objects it trained: the scheduler moved the learning rate,
    which is what the checkpoint holds too."""
    store = CheckpointStore(fast_tmp / "s")
    model, opt, loader, evaluate, sched = setup(scheduler=True)
    kw = dict(store=store, run="r", monitor="val_loss", patience=None, scheduler=sched, progress=False,
              verbose=False)
    fit(model, opt, loader, evaluate, max_epochs=2, **kw)
    assert opt.param_groups[0]["lr"] == 0.0025
    result = fit(model, opt, loader, evaluate, max_epochs=3, **kw)
    assert result.epochs == 3 and result.changes == ()
    # A fresh script with the same settings is not a change either; one with another gamma is.
    train(store, max_epochs=4, scheduler=True)
    model, opt, loader, evaluate, _ = setup()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    with pytest.raises(RunMismatchError, match="scheduler gamma: 0.5 -> 0.9"):
        fit(model, opt, loader, evaluate, max_epochs=5, **dict(kw, scheduler=sched))


def test_branching_into_a_new_run_may_change_settings_and_records_them(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    train(store, max_epochs=2, lr=0.01)
    src = store.get("r@1")
    result, _, _ = train(store, max_epochs=3, run="r-lr", lr=0.1, resume="r@1")
    assert result.changes == ("optimizer lr: 0.01 -> 0.1",) and result.epochs == 3
    assert store.get("r-lr@2").parent == src.id
    assert store.load("r-lr:latest", key="run_config")["changes"][0]["checkpoint"] == src.id


def test_changed_split_seed_cannot_be_resumed_into(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))

    def run(seed: int, **kw):  # type: ignore[no-untyped-def]
        split = DataSplit(data, [0.75, 0.25], seed=seed)
        model = nn.Linear(4, 2)
        return fit(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(split.train, batch_size=10),
                   lambda m: {"val_loss": 1.0}, store=store, run="r", max_epochs=kw.pop("max_epochs"),
                   monitor="val_loss", split=split, progress=False, verbose=False, **kw)

    run(0, max_epochs=1)
    with pytest.raises(RunMismatchError, match=r"split seed: 0 -> 1") as err:
        run(1, max_epochs=2, allow_changes=True)
    assert "allow_changes=True cannot override this" in str(err.value)


def test_checkpoint_without_run_config_still_resumes_and_checks_the_model(fast_tmp):
    """Checkpoints written before run_config existed: what the checkpoint itself shows is still checked."""
    store = CheckpointStore(fast_tmp / "s")
    train(store, max_epochs=1, run="new")
    info = store.latest("new")
    state = store.load(info.id)
    del state["run_config"]
    store.save("old", info.epoch, state, info.metrics, step=info.step)
    with pytest.raises(RunMismatchError, match=r"model 0.weight shape: \(8, 4\) -> \(16, 4\)"):
        train(store, max_epochs=2, run="old", hidden=16)
    result, _, _ = train(store, max_epochs=2, run="old", lr=0.3)  # hyperparameters unknown: not compared
    assert result.epochs == 2 and "changes" in store.load("old:latest", key="run_config")


# -- item 10: fit's options, the monitor check, save every N epochs --------------------------------------
def test_fit_options_are_visible_in_its_signature_and_help():
    params = inspect.signature(fit).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in ("store", "run", "max_epochs", "monitor", "patience", "save_every_steps", "save_every_epochs",
                 "resume", "allow_changes", "retention", "sanity_check", "exit_on_signal"):
        assert name in params and name in fit.__doc__, name
    assert params["save_every_epochs"].default == 1 and params["allow_changes"].default is False


def test_monitor_evaluate_does_not_return_fails_before_any_training_or_save(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    model, opt, loader, evaluate, _ = setup()
    steps = Steps()
    with pytest.raises(InvalidArgumentError) as err:
        fit(model, opt, loader, evaluate, store=store, run="r", max_epochs=3, monitor="val_acc",
            save_every_steps=1, progress=False, verbose=False, callbacks=[steps])
    msg = str(err.value)
    assert "monitor 'val_acc' is not among the metrics evaluate(model) returned: ['val_loss']" in msg
    assert "Nothing was trained or saved" in msg
    assert steps.lrs == [] and store.list() == [] and "r" not in {r.name for r in store.runs()}


def test_sanity_check_leaves_the_run_exact(fast_tmp):
    """evaluate draws random numbers here; the check undoes them, so the run is the one without it."""
    def go(path, check: bool):  # type: ignore[no-untyped-def]
        model, opt, loader, _, _ = setup()
        fit(model, opt, loader, lambda m: {"val_loss": float(torch.rand(()))}, store=path, run="r", max_epochs=2,
            monitor="val_loss", progress=False, verbose=False, sanity_check=check)
        return model
    a, b = go(fast_tmp / "a", True), go(fast_tmp / "b", False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert CheckpointStore(fast_tmp / "a").latest("r").metrics == CheckpointStore(fast_tmp / "b").latest("r").metrics


def test_save_every_epochs_keeps_last_and_best(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    model, opt, loader, _, _ = setup()
    values = iter([5.0, 4.0, 4.5, 4.6, 4.7, 3.0, 3.5, 3.6, 3.7, 3.8])
    result = fit(model, opt, loader, lambda m: {"val_loss": next(values)}, store=store, run="r", max_epochs=10,
                 monitor="val_loss", patience=None, save_every_epochs=4, progress=False, verbose=False,
                 sanity_check=False)
    epochs = [i.epoch for i in store.list(run="r")]
    # every 4th epoch (3, 7), each new best (0, 1, 5), and the last (9)
    assert epochs == [0, 1, 3, 5, 7, 9]
    assert result.best.epoch == 5 and len(store.load("r:latest", key="history")) == 10
    with pytest.raises(InvalidArgumentError, match="save_every_epochs"):
        train(store, max_epochs=1, run="x", save_every_epochs=0)


def test_save_every_epochs_early_stop_is_saved(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    model, opt, loader, _, _ = setup()
    values = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    result = fit(model, opt, loader, lambda m: {"val_loss": next(values)}, store=store, run="r", max_epochs=10,
                 monitor="val_loss", patience=2, save_every_epochs=5, progress=False, verbose=False,
                 sanity_check=False)
    assert result.stop_reason == "early_stopping"
    assert [i.epoch for i in store.list(run="r")] == [0, 2]  # the best, and the epoch early stopping ended
