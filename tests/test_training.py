"""ckpt.training: exact resume, early stopping, best restore, signals, retention, splits, transfer.

The scenario below is shared with test_training_resume.py, which runs it in child processes
(`python tests/test_training.py --child STORE ...`) and kills them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from ckpt import CheckpointStore, InvalidArgumentError, KeyMismatchError, MetricDirectionError
from ckpt.training.rng import deterministic_algorithms
from ckpt.training import (DataSplit, EarlyStopping, History, StopSignals, capture_rng_state, fit, freeze,
                           load_pretrained, remap_keys, restore_rng_state, seed_everything, trainable_parameters)

RUN = "r"
STEPS_PER_EPOCH = 12


# -- the shared scenario ------------------------------------------------------------------------------
class Jittered(Dataset):
    """Reading a sample draws from NumPy's, Python's and torch's global generators (augmentation)."""

    def __init__(self, n: int = 160) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, 6, generator=g)
        self.y = ((self.x[:, 0] - self.x[:, 1] + 0.7 * torch.randn(n, generator=g)) > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        x = self.x[i] + torch.from_numpy(np.random.normal(0, 0.05, 6).astype(np.float32))
        if random.random() < 0.05:
            x = -x
        return x + 0.01 * torch.randn(6), self.y[i]


def scenario(store, run: str = RUN, *, max_epochs: int = 8, save_every_steps: int | None = None,  # type: ignore[no-untyped-def]
             callbacks=(), retention=None, generator: bool = True, split_seed: int | None = 0, **kw):
    seed_everything(0)
    split = DataSplit(Jittered(), [0.75, 0.25], seed=split_seed)
    loader = DataLoader(split.train, batch_size=10, shuffle=True,
                        generator=torch.Generator().manual_seed(1) if generator else None)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.7)

    def evaluate(m: nn.Module) -> dict[str, float]:
        idx = split.val.indices
        out = m(split.dataset.x[idx])
        return {"val_loss": nn.functional.cross_entropy(out, split.dataset.y[idx]).item(),
                "val_acc": (out.argmax(1) == split.dataset.y[idx]).float().mean().item()}

    kw.setdefault("monitor", "val_loss")
    kw.setdefault("patience", 2)
    kw.setdefault("verbose", False)
    kw.setdefault("progress", False)
    result = fit(model, opt, loader, evaluate, store=store, run=run, max_epochs=max_epochs, scheduler=sched,
                 split=split, save_every_steps=save_every_steps, callbacks=list(callbacks), retention=retention, **kw)
    return result, model


def diff_states(a, b, path: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    """Paths where two states differ, exactly (types, tensor and array bits, values)."""
    if type(a) is not type(b):
        return [path or "/"]
    if isinstance(a, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [path]
    if isinstance(a, np.ndarray):
        return [] if a.dtype == b.dtype and np.array_equal(a, b) else [path]
    if isinstance(a, dict):
        if list(a) != list(b):
            return [path]
        return [d for k in a for d in diff_states(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_states(x, y, f"{path}/{i}")]
    return [] if a == b or (a != a and b != b) else [path]


def assert_same_run(store_a, store_b, run_a: str = RUN, run_b: str = RUN) -> None:  # type: ignore[no-untyped-def]
    """Same final state (weights, optimizer, scheduler, RNGs, data order, history, early stopping) and
    same best checkpoint."""
    a, b = store_a.load(f"{run_a}:latest"), store_b.load(f"{run_b}:latest")
    assert diff_states(a, b) == []
    la, lb = store_a.latest(run_a), store_b.latest(run_b)
    assert (la.epoch, la.step, la.metrics) == (lb.epoch, lb.step, lb.metrics)
    ba, bb = store_a.best("val_loss", run=run_a), store_b.best("val_loss", run=run_b)
    assert (ba.epoch, ba.metrics) == (bb.epoch, bb.metrics)


class Crash(Exception):
    pass


class At:
    """A callback that runs ``action`` once the loop reaches global step ``step``."""

    def __init__(self, step: int, action) -> None:  # type: ignore[no-untyped-def]
        self.step, self.action = step, action

    def on_step_end(self, trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            self.action()


def _raise() -> None:
    raise Crash()


def _fast_dir(fallback):  # type: ignore[no-untyped-def]
    """Stores for these tests go to tmpfs when there is one: a save's fsyncs cost ~0.1 s on a busy
    disk and these tests save a few hundred times. Durability is the store's own tests' business; a
    SIGKILL (what these tests do) loses nothing from the page cache either way."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return pathlib.Path(tempfile.mkdtemp(prefix="ckpt-training-", dir="/dev/shm"))
    return fallback


@pytest.fixture
def fast_tmp(tmp_path):
    path = _fast_dir(tmp_path)
    yield path
    if path != tmp_path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_torch():
    """One thread (the child processes use one too: same kernels, same bits) and no leaked flags."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    deterministic_algorithms(det)  # torch.use_deterministic_algorithms, without importing the compiler


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, with step checkpoints every 5 steps (not a divisor of 12)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fallback = tmp_path_factory.mktemp("reference")
    path = _fast_dir(fallback)
    store = CheckpointStore(path)
    result, model = scenario(store, save_every_steps=5)
    torch.set_num_threads(threads)
    assert result.stop_reason == "early_stopping" and 3 <= result.epochs < 8  # the scenario stops early
    yield store, result
    store.close()
    if path != fallback:
        shutil.rmtree(path, ignore_errors=True)


# -- early stopping against scripted sequences --------------------------------------------------------
@pytest.mark.parametrize("mode,values,kw,stop_at,reference_epoch", [
    ("min", [1.0, 0.9, 0.95, 0.96, 0.5], dict(patience=2), 3, 1),
    ("max", [0.5, 0.6, 0.6, 0.59, 0.7], dict(patience=2), 3, 1),  # equal is not better
    ("max", [0.5, 0.54, 0.56, 0.57, 0.58, 0.9], dict(patience=2, min_delta=0.05), 4, 2),  # 0.54 < 0.5+0.05
    ("min", [1.0, 0.99, 0.985, 0.9], dict(patience=2, min_delta=0.02), 2, 0),
    ("min", [1, 2, 3, 4, 5, 6, 7], dict(patience=1, min_epochs=5), 4, 0),  # waits for min_epochs
    ("min", [1, 2, 0.5, 0.6, 0.7, 0.8], dict(patience=1, min_epochs=3), 3, 2),  # improvement at epoch 2 resets
    ("max", [0.5, float("nan"), float("nan"), 0.9], dict(patience=2), 2, 0),  # NaN never improves
    ("min", [3, 2, 1, 1, 1, 1, 1], dict(patience=None), None, 2),  # no patience: never stops
    ("max", [0.1, 0.2, 0.1], dict(patience=0), 2, 1),  # patience 0: first epoch without improvement
])
def test_early_stopping_rule(mode, values, kw, stop_at, reference_epoch):
    es = EarlyStopping("metric", mode, **kw)
    stopped = None
    for epoch, v in enumerate(values):
        if es.update(epoch, v):
            stopped = epoch
            break
    assert stopped == stop_at
    assert es.reference_epoch == reference_epoch
    clone = EarlyStopping("metric", mode, **kw)
    clone.load_state_dict(es.state_dict())
    assert clone.state_dict() == es.state_dict()


def test_early_stopping_mode_inferred_or_required():
    assert EarlyStopping("val_loss").mode == "min"
    assert EarlyStopping("val_acc").mode == "max"
    with pytest.raises(MetricDirectionError):
        EarlyStopping("wobble")
    with pytest.raises(InvalidArgumentError):
        EarlyStopping("val_loss", patience=-1)


def _scripted(fast_tmp, values, **kw):  # type: ignore[no-untyped-def]
    """fit on a one-batch loader whose evaluate returns ``values`` epoch by epoch."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=8)
    seq = iter(values)
    store = kw.pop("store", None) or CheckpointStore(fast_tmp / "s")
    kw.setdefault("verbose", False)
    kw.setdefault("progress", False)
    kw.setdefault("sanity_check", False)  # evaluate is a scripted sequence: the check would take a value
    result = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), data, lambda m: {"score": next(seq)},
                 store=store, run="scripted", **kw)
    return store, result, model


def test_fit_stops_on_scripted_sequence_and_restores_the_index_best(fast_tmp):
    # min_delta 0.05: 0.61 (epoch 3) is not a significant improvement over 0.6, so patience runs out at
    # epoch 4, but it is the best checkpoint in the index, and that is what gets restored.
    values = [0.5, 0.52, 0.6, 0.61, 0.605, 0.9, 0.9]
    store, result, model = _scripted(fast_tmp, values, max_epochs=7, monitor="score", mode="max", patience=2,
                                     min_delta=0.05)
    assert result.stop_reason == "early_stopping" and result.stopped_early
    assert result.epochs == 5 and result.early_stopping.stopped_epoch == 4
    assert result.early_stopping.reference_epoch == 2
    assert result.best.epoch == 3 and result.best.id == store.best("score", run="scripted").id
    saved = store.load("scripted@3", key="model")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert [r["score"] for r in result.history] == values[:5]
    assert {r.name: r.status for r in store.runs()}["scripted"] == "completed"


def test_fit_min_epochs_and_min_mode(fast_tmp):
    store, result, _ = _scripted(fast_tmp, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], max_epochs=6, monitor="score",
                                 mode="min", patience=1, min_epochs=4)
    assert result.stop_reason == "early_stopping" and result.epochs == 4
    assert result.best.epoch == 0


def test_fit_runs_to_max_epochs_without_patience(fast_tmp):
    store, result, _ = _scripted(fast_tmp, [3.0, 2.0, 2.5, 2.6, 2.7], max_epochs=5, monitor="score", mode="min",
                                 patience=None)
    assert result.stop_reason == "max_epochs" and result.epochs == 5 and result.best.epoch == 1
    assert [i.epoch for i in store.list(run="scripted")] == [0, 1, 2, 3, 4]


def test_fit_checks_its_arguments(fast_tmp):
    with pytest.raises(InvalidArgumentError, match="monitor"):
        _scripted(fast_tmp, [1.0], max_epochs=1, monitor="val_acc")
    model = nn.Linear(3, 2)
    with pytest.raises(InvalidArgumentError, match="evaluate"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), [], store=fast_tmp / "s2", run="x", max_epochs=1)
    with pytest.raises(InvalidArgumentError, match="max_epochs"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), [], store=fast_tmp / "s2", run="x", max_epochs=0,
            monitor=None)


# -- best restore after a restart --------------------------------------------------------------------
def test_best_restore_after_restart(fast_tmp):
    """The best epoch was before the restart; after it, the index still knows, and early stopping's
    patience carries on counting from the checkpoint (same stop as an uninterrupted run)."""
    values = [0.9, 0.5, 0.7, 0.8, 0.6, 0.9, 0.4]
    _, straight, straight_model = _scripted(fast_tmp / "a", values, max_epochs=7, monitor="score", mode="min",
                                            patience=3)
    assert straight.stop_reason == "early_stopping" and straight.epochs == 5 and straight.best.epoch == 1

    class CrashInEpoch3:
        def on_epoch_start(self, trainer):  # type: ignore[no-untyped-def]
            if trainer.epoch == 3:
                raise Crash()

    with pytest.raises(Crash):
        _scripted(fast_tmp / "b", values, max_epochs=7, monitor="score", mode="min", patience=3,
                  callbacks=[CrashInEpoch3()])
    store = CheckpointStore(fast_tmp / "b" / "s")  # a new process would open it afresh
    assert {r.name: r.status for r in store.runs()}["scripted"] == "failed"
    assert store.latest("scripted").epoch == 2
    _, resumed, model = _scripted(fast_tmp / "b", values[3:], max_epochs=7, monitor="score", mode="min",
                                  patience=3, store=store)
    assert resumed.resumed_from.epoch == 2
    assert resumed.stop_reason == "early_stopping" and resumed.epochs == 5
    assert resumed.best.epoch == 1 and resumed.best.metrics["score"] == 0.5
    best_weights = store.load("scripted@1", key="model")
    assert all(torch.equal(v, best_weights[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, straight_model.state_dict()[k]) for k, v in model.state_dict().items())
    assert [r["score"] for r in resumed.history] == values[:5]


def test_resume_after_finish_trains_nothing_unless_max_epochs_grows(fast_tmp):
    store, first, _ = _scripted(fast_tmp, [3.0, 2.0, 1.0], max_epochs=3, monitor="score", mode="min")
    n = len(store.list())
    _, again, model = _scripted(fast_tmp, [], max_epochs=3, monitor="score", mode="min", store=store)
    assert again.stop_reason == "max_epochs" and again.epochs == 3 and len(store.list()) == n
    assert again.best.epoch == 2
    _, more, _ = _scripted(fast_tmp, [0.5, 0.7], max_epochs=5, monitor="score", mode="min", store=store)
    assert more.epochs == 5 and more.best.epoch == 3 and len(store.list()) == n + 2


# -- exact resume (in process; the SIGKILL variants are in test_training_resume.py) -------------------
def test_exception_marks_failed_keeps_checkpoints_and_resume_is_exact(fast_tmp, reference):
    ref_store, _ = reference
    store = CheckpointStore(fast_tmp / "s")
    with pytest.raises(Crash):
        scenario(store, save_every_steps=5, callbacks=[At(23, _raise)])
    assert {r.name: r.status for r in store.runs()}[RUN] == "failed"
    assert store.latest(RUN).step == 20  # the last save before the crash is in place
    with pytest.raises(Crash):
        scenario(store, save_every_steps=5, callbacks=[At(31, _raise)])  # crash again after resuming
    result, _ = scenario(store, save_every_steps=5)
    assert result.resumed_from.step == 30
    assert {r.name: r.status for r in store.runs()}[RUN] == "completed"
    assert_same_run(store, ref_store)


@pytest.mark.parametrize("generator", [True, False])
def test_mid_epoch_resume_without_step_checkpoints_restarts_epoch_exactly(fast_tmp, generator):
    """Without save_every_steps a crash falls back to the last epoch checkpoint; with and without a
    loader generator (the sampler then draws from the global torch generator)."""
    a, b = CheckpointStore(fast_tmp / "a"), CheckpointStore(fast_tmp / "b")
    scenario(a, generator=generator, max_epochs=4, patience=None)
    with pytest.raises(Crash):
        scenario(b, generator=generator, max_epochs=4, patience=None, callbacks=[At(30, _raise)])
    assert b.latest(RUN).epoch == 1
    scenario(b, generator=generator, max_epochs=4, patience=None)
    assert_same_run(a, b)


class Stream(torch.utils.data.IterableDataset):
    """No len(): the loop peeks one batch to know whether a step is an epoch's last."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        for _ in range(50):
            yield torch.randn(6) + float(np.random.rand()), torch.tensor(random.randint(0, 1))


@pytest.mark.parametrize("kind", ["iterable", "workers"])
def test_resume_with_iterable_dataset_or_worker_processes(fast_tmp, kind):
    def run(path, crash_at=None):  # type: ignore[no-untyped-def]
        seed_everything(0)
        if kind == "iterable":
            loader = DataLoader(Stream(), batch_size=10)  # 5 batches per epoch
        else:
            loader = DataLoader(Jittered(50), batch_size=10, shuffle=True, num_workers=2,
                                generator=torch.Generator().manual_seed(0))
        model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.Linear(16, 2))
        fit(model, torch.optim.Adam(model.parameters()), loader, store=path, run=RUN, max_epochs=3,
            monitor="train_loss", save_every_steps=2, verbose=False,
            callbacks=[At(crash_at, _raise)] if crash_at else [])

    run(fast_tmp / "a")
    for crash in (4, 8, 11):
        with pytest.raises(Crash):
            run(fast_tmp / "b", crash)
    run(fast_tmp / "b")
    a, b = CheckpointStore(fast_tmp / "a"), CheckpointStore(fast_tmp / "b")
    assert diff_states(a.load(f"{RUN}:latest"), b.load(f"{RUN}:latest")) == []
    assert [(i.epoch, i.step) for i in a.list(run=RUN)] == [(0, 2), (0, 4), (0, 5), (1, 6), (1, 8), (1, 10),
                                                           (2, 12), (2, 14), (2, 15)]


def test_sigterm_in_process_saves_the_step_and_resume_is_exact(fast_tmp, reference):
    ref_store, _ = reference
    store = CheckpointStore(fast_tmp / "s")
    before = signal.getsignal(signal.SIGTERM)
    result, _ = scenario(store, save_every_steps=5, exit_on_signal=False,
                         callbacks=[At(17, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    assert signal.getsignal(signal.SIGTERM) is before  # handlers put back
    assert result.interrupted and result.stop_reason == "SIGTERM"
    last = store.latest(RUN)
    assert (last.epoch, last.step) == (1, 17)  # the step that was running when the signal came
    state = store.load(f"{RUN}:latest", key="loop")
    assert state["epoch_complete"] is False and state["batches_done"] == 5
    assert {r.name: r.status for r in store.runs()}[RUN] == "interrupted"  # as docs/training.md says
    result, _ = scenario(store, save_every_steps=5)
    assert result.resumed_from.step == 17 and not result.interrupted
    assert_same_run(store, ref_store)


def test_sigint_on_an_epochs_last_batch_finishes_the_epoch_then_exits(fast_tmp, reference):
    ref_store, _ = reference
    store = CheckpointStore(fast_tmp / "s")
    with pytest.raises(SystemExit) as exc:
        scenario(store, callbacks=[At(24, lambda: os.kill(os.getpid(), signal.SIGINT))])
    assert exc.value.code == 128 + signal.SIGINT
    last = store.latest(RUN)
    assert (last.epoch, last.step) == (1, 24) and "val_loss" in last.metrics  # the epoch checkpoint
    scenario(store, save_every_steps=5)
    assert_same_run(store, ref_store)


def test_stop_signals_second_sigint_raises():
    with StopSignals() as s:
        os.kill(os.getpid(), signal.SIGINT)
        assert s.received == signal.SIGINT and s.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)


def test_retention_after_each_save_keeps_what_resume_and_best_need(fast_tmp, reference):
    ref_store, ref = reference
    store = CheckpointStore(fast_tmp / "s")
    with pytest.raises(Crash):
        scenario(store, save_every_steps=5, retention=dict(keep_last=2, keep_best=1), callbacks=[At(44, _raise)])
    infos = store.list(run=RUN)
    assert store.latest(RUN).step == 40 and len(infos) <= 3
    scenario(store, save_every_steps=5, retention=dict(keep_last=2, keep_best=1))
    infos = store.list(run=RUN)
    best = store.best("val_loss", run=RUN)
    assert best.epoch == ref.best.epoch
    assert {i.id for i in infos} == {best.id} | {i.id for i in infos[-2:]}
    assert_same_run(store, ref_store)
    hist = History.from_store(store, RUN)  # the history outlives the pruned checkpoints
    assert hist.epochs == list(range(ref.epochs))


def test_resume_from_selector_branches_with_lineage(fast_tmp, reference):
    ref_store, ref = reference
    store = CheckpointStore(fast_tmp / "s")
    scenario(store, save_every_steps=5)
    src = store.get(f"{RUN}@1")
    with pytest.raises(InvalidArgumentError, match="new run name"):
        scenario(store, resume=f"{RUN}@1")
    with pytest.raises(InvalidArgumentError, match="already has"):
        scenario(store, resume=None)
    result, _ = scenario(store, "branch", resume=f"{RUN}@1", save_every_steps=5)
    assert result.resumed_from.id == src.id
    first = store.list(run="branch")[0]
    assert first.parent == src.id  # lineage: the branch point
    assert_same_run(store, ref_store, "branch", RUN)  # same training, continued from epoch 1


def test_damaged_latest_checkpoint_is_skipped_loudly_on_resume(fast_tmp, reference):
    ref_store, _ = reference
    store = CheckpointStore(fast_tmp / "s")
    with pytest.raises(Crash):
        scenario(store, save_every_steps=5, callbacks=[At(33, _raise)])
    latest = store.latest(RUN)
    packs = {store.manifest(latest.id).slots[i].pack for i in range(len(store.manifest(latest.id).slots))}
    own = [p for p in packs if os.path.exists(fast_tmp / "s" / "packs" / f"{p}.safetensors")]
    newest = max(own, key=lambda p: os.path.getmtime(fast_tmp / "s" / "packs" / f"{p}.safetensors"))
    path = fast_tmp / "s" / "packs" / f"{newest}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="damaged"):
        result, _ = scenario(store, save_every_steps=5)
    assert result.resumed_from.step == 25
    assert_same_run(store, ref_store)


def test_checkpoint_contents(fast_tmp, reference):
    ref_store, ref = reference
    state = ref_store.load(f"{RUN}:latest")
    assert set(state) >= {"model", "optimizer", "scheduler", "grad_scaler", "loop", "early_stopping", "history",
                          "rng", "data", "extra"}
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert set(state["data"]["generators"]) == {"loader"}  # the sampler shares the loader's generator
    assert state["data"]["split"]["seed"] == 0 and len(state["data"]["split"]["indices"]) == 2
    assert state["early_stopping"]["stopped_epoch"] == ref.epochs - 1
    mid = [i for i in ref_store.list(run=RUN) if not i.metrics]
    assert mid and all(i.step % 5 == 0 for i in mid)  # step checkpoints carry no metrics
    m = ref_store.load(mid[0].id)
    assert m["data"]["epoch_start"] is not None and m["loop"]["epoch_complete"] is False
    ends = [i for i in ref_store.list(run=RUN) if i.metrics]
    assert [i.step for i in ends] == [STEPS_PER_EPOCH * (e + 1) for e in range(ref.epochs)]
    assert ref_store.get(f"{RUN}@0").id == ends[0].id  # RUN@EPOCH names the epoch's own checkpoint


# -- data splits --------------------------------------------------------------------------------------
def test_data_split_without_seed_is_restored_on_resume(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    with pytest.raises(Crash):
        scenario(store, split_seed=None, max_epochs=3, callbacks=[At(15, _raise)])
    first = store.load(f"{RUN}:latest", key="data")["split"]
    scenario(store, split_seed=None, max_epochs=3)  # a new random seed, overridden by the checkpoint's split
    last = store.load(f"{RUN}:latest", key="data")["split"]
    assert last["seed"] == first["seed"]
    assert all(torch.equal(a, b) for a, b in zip(first["indices"], last["indices"]))


def test_unseeded_torch_random_split_is_refused_on_resume(fast_tmp):
    ds = TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))

    def run(crash: bool) -> None:
        train, _ = random_split(ds, [30, 10])  # a different split in every process
        model = nn.Linear(3, 2)
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(train, batch_size=10), store=fast_tmp / "s",
            run="x", max_epochs=2, monitor=None, verbose=False, callbacks=[At(4, _raise)] if crash else [])

    with pytest.raises(Crash):
        run(True)
    with pytest.raises(InvalidArgumentError, match="different subset"):
        run(False)


def test_data_split_lengths_must_match():
    ds = TensorDataset(torch.randn(20, 2))
    a, b = DataSplit(ds, [0.5, 0.5], seed=1), DataSplit(ds, [15, 5], seed=1)
    with pytest.raises(InvalidArgumentError):
        b.load_state_dict(a.state_dict())
    train, val = a
    assert len(train) == len(val) == 10 and a.train is train and a.val is val


# -- RNG ------------------------------------------------------------------------------------------------
def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trips_through_the_store(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    seed_everything(3, deterministic=False)
    _draw()
    store.save("rng", 0, {"rng": capture_rng_state()})
    expected = _draw()
    _draw()
    restore_rng_state(store.load("rng:latest", key="rng"))
    assert _draw() == expected


def test_cuda_rng_states_in_a_checkpoint_without_cuda_warn():
    state = capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by test_cuda_rng_round_trip")
    with pytest.warns(RuntimeWarning, match="CUDA"):
        restore_rng_state(state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip(fast_tmp):
    torch.cuda.init()
    store = CheckpointStore(fast_tmp / "s")
    torch.cuda.manual_seed_all(5)
    torch.rand(1, device="cuda")
    store.save("rng", 0, {"rng": capture_rng_state()})
    expected = [torch.rand(3, device=f"cuda:{i}").cpu() for i in range(torch.cuda.device_count())]
    state = store.load("rng:latest", key="rng")
    assert len(state["cuda"]) == torch.cuda.device_count()
    restore_rng_state(state)
    got = [torch.rand(3, device=f"cuda:{i}").cpu() for i in range(torch.cuda.device_count())]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


# -- progress and history ---------------------------------------------------------------------------------
def test_progress_bar_when_asked_and_quiet_when_not_a_terminal(fast_tmp, capsys):
    _scripted(fast_tmp / "a", [0.5, 0.6], max_epochs=2, monitor="score", mode="max", progress=True)
    err = capsys.readouterr().err
    assert "epoch 1" in err and "score=" in err and "loss=" in err
    _scripted(fast_tmp / "b", [0.5, 0.6], max_epochs=2, monitor="score", mode="max", progress="auto",
              verbose=True)
    out = capsys.readouterr()
    assert "epoch 1 | train_loss" in out.out and "batch/s" not in out.err and "it/s" not in out.err


def test_history_and_plot(fast_tmp):
    store, result, _ = _scripted(fast_tmp, [0.5, 0.6, 0.55], max_epochs=3, monitor="score", mode="max")
    hist = History.from_store(store, "scripted")
    assert hist.epochs == [0, 1, 2] and hist["score"] == [0.5, 0.6, 0.55]
    assert set(hist.metrics()) == {"train_loss", "score", "lr"}
    with pytest.raises(KeyError):
        hist["nope"]
    pytest.importorskip("matplotlib")
    from ckpt.training import plot_history
    out = plot_history(hist, str(fast_tmp / "h.png"), best_epoch=1)
    assert os.path.getsize(out) > 1000


# -- transfer learning --------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, classes)


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module, name: str) -> None:
        super().__init__()
        self.add_module(name, inner)


def _equal_body(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.body.state_dict().values(), b.body.state_dict().values()))


@pytest.mark.parametrize("saved_as,loaded_as", [("module", None), ("_orig_mod", None), (None, "module"),
                                                ("module", "_orig_mod")])
def test_load_pretrained_remaps_wrapper_prefixes(fast_tmp, saved_as, loaded_as):
    store = CheckpointStore(fast_tmp / "s")
    src = Net(3)
    store.save("pre", 0, {"model": (Wrap(src, saved_as) if saved_as else src).state_dict()})
    dst = Net(3)
    target = Wrap(dst, loaded_as) if loaded_as else dst
    report = load_pretrained(target, store, "pre:latest", strict=True)
    assert report.loaded == 6 and not report.missing_keys and not report.unexpected_keys
    assert _equal_body(src, dst) and torch.equal(src.head.weight, dst.head.weight)


def test_load_pretrained_new_head_reports_and_strict_refuses(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    src = Net(3)
    state = src.state_dict()
    state["extra.weight"] = torch.ones(2)
    store.save("pre", 0, {"model": state})
    dst = Net(5)
    head_before = dst.head.weight.clone()
    report = load_pretrained(dst, store, "pre:latest")
    assert report.loaded == 4 and _equal_body(src, dst)
    assert [k for k, _, _ in report.mismatched_keys] == ["head.weight", "head.bias"]
    assert report.unexpected_keys == ["extra.weight"] and report.missing_keys == []
    assert torch.equal(dst.head.weight, head_before)
    assert "shape differs" in str(report) and report.checkpoint.run == "pre"
    with pytest.raises(KeyMismatchError):
        load_pretrained(Net(5), store, "pre:latest", strict=True)


def test_load_pretrained_nothing_matching_is_an_error(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    store.save("pre", 0, {"model": {"encoder.weight": torch.ones(8, 4)}})
    with pytest.raises(KeyMismatchError, match="no tensor"):
        load_pretrained(Net(3), store, "pre:latest")
    report = load_pretrained(Net(3), store, "pre:latest", rename={"encoder.": "body.0."})
    assert report.loaded_keys == ["body.0.weight"] and "body.0.bias" in report.missing_keys


def test_remap_keys_and_freeze():
    assert list(remap_keys({"module._orig_mod.a.weight": 1, "b._orig_mod.c": 2})) == ["a.weight", "b.c"]
    with pytest.raises(InvalidArgumentError):
        remap_keys({"module.a": 1, "a": 2})
    net = Net(2)
    assert freeze(net.body) == 4
    assert trainable_parameters(net) == [net.head.weight, net.head.bias]


def test_finetune_checkpoints_only_add_the_trainable_part(fast_tmp):
    store = CheckpointStore(fast_tmp / "s")
    torch.manual_seed(0)

    def net(classes: int) -> nn.Module:
        return nn.Sequential(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256)), nn.Linear(256, classes))

    pre_info = store.save("pre", 0, {"model": net(4).state_dict()})
    model = net(2)
    report = load_pretrained(model, store, pre_info.id)
    assert [k for k, _, _ in report.mismatched_keys] == ["1.weight", "1.bias"]
    freeze(model[0])
    data = DataLoader(TensorDataset(torch.randn(32, 64), torch.randint(0, 2, (32,))), batch_size=16)
    result = fit(model, torch.optim.Adam(trainable_parameters(model)), data, store=store, run="ft",
                 max_epochs=2, monitor="train_loss", parent=report.checkpoint, verbose=False)
    infos = store.list(run="ft")
    assert infos[0].parent == pre_info.id and result.epochs == 2
    backbone = sum(p.numel() * 4 for p in model[0].parameters())
    assert all(i.logical_size > backbone and i.new_bytes < backbone / 10 for i in infos)


# -- the child process used by test_training_resume.py ----------------------------------------------------
def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--kill-after-epoch", type=int)  # SIGKILL right after that epoch's checkpoint
    ap.add_argument("--kill-at-step", type=int)  # SIGKILL after that optimizer step, before any save
    ap.add_argument("--step-delay", type=float, default=0.0)  # slow steps, so a timed signal lands mid-run
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    class Child:
        def on_fit_start(self, trainer):  # type: ignore[no-untyped-def]
            print("READY", trainer.global_step, flush=True)

        def on_step_end(self, trainer):  # type: ignore[no-untyped-def]
            print("STEP", trainer.global_step, flush=True)
            if trainer.global_step == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(args.step_delay)

        def on_save(self, trainer, info):  # type: ignore[no-untyped-def]
            print("SAVED", info.epoch, info.step, flush=True)
            if info.metrics and info.epoch == args.kill_after_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scenario(CheckpointStore(args.store), save_every_steps=5, callbacks=[Child()],
                 retention=dict(keep_last=3, keep_best=1))


if __name__ == "__main__":
    child_main(sys.argv[1:])
