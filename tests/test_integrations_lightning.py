"""Lightning: a real Trainer saves through CkptCheckpointIO, evicts with save_top_k, resumes by selector."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

pytest.importorskip("lightning", reason="the Lightning integration needs `pip install lightning`")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402
from ckpt.errors import DuplicateCheckpointError  # noqa: E402
from ckpt.integrations.lightning import POINTER_FORMAT, WEIGHTS, CkptCheckpointIO  # noqa: E402


class TinyModule(pl.LightningModule):
    def __init__(self, hidden: int = 512, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()  # an AttributeDict in the checkpoint
        self.backbone = nn.Linear(6, hidden)
        self.backbone.requires_grad_(False)  # frozen: stored once, then deduplicated
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.backbone(x)))

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss)
        self.log("neg_loss", -loss)  # a metric whose name says nothing about its direction

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.head.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


def _loader(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=g)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    return torch.utils.data.DataLoader(ds, batch_size=8)


def _trainer(io, dirpath, max_epochs, **kw):
    return pl.Trainer(max_epochs=max_epochs, plugins=[io], accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(dirpath),
                      callbacks=[ModelCheckpoint(dirpath=str(dirpath), monitor="val_loss", save_top_k=2,
                                                 save_last=True), io.metrics_callback(), *kw.pop("callbacks", [])],
                      **kw)


class CaptureStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.epoch = trainer.current_epoch
        self.step = trainer.global_step
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.momentum = [s["momentum_buffer"].clone() for s in trainer.optimizers[0].state.values()]


def test_trainer_saves_to_the_store_and_resumes_by_selector(tmp_path):
    torch.manual_seed(0)
    store = CheckpointStore(tmp_path / "store")
    io = CkptCheckpointIO(store, run="lit")
    dirpath = tmp_path / "ckpts"
    trainer = _trainer(io, dirpath, max_epochs=4)
    trainer.fit(TinyModule(), _loader(0), _loader(1))

    infos = store.list("lit")
    pointers = {f: json.loads((dirpath / f).read_text()) for f in os.listdir(dirpath)}
    assert "last.ckpt" in pointers and all(p["format"] == POINTER_FORMAT for p in pointers.values())
    # What ModelCheckpoint kept is exactly what the store kept: top-2 plus last, evictions deleted.
    assert {p["checkpoint"] for p in pointers.values()} == {i.id for i in infos}
    assert 2 <= len(infos) <= 3 and len(pointers) == 3
    assert all("val_loss" in i.metrics and i.step == (i.epoch + 1) * 4 for i in infos)
    latest = store.get("lit:latest")
    assert pointers["last.ckpt"]["checkpoint"] == latest.id and latest.epoch == 3
    assert latest.new_bytes < 6 * 512 * 4  # the frozen backbone (12 KiB) was not written again
    saved = store.load(latest.id)
    assert saved["hyper_parameters"] == {"hidden": 512, "lr": 0.01}
    assert torch.equal(saved["state_dict"]["backbone.weight"], trainer.lightning_module.backbone.weight)
    best_path = trainer.checkpoint_callback.best_model_path
    assert io.resolve(best_path) == pointers[os.path.basename(best_path)]["checkpoint"]

    # Resume in a fresh process-like setting (a new plugin over the same store) through a selector.
    io2 = CkptCheckpointIO(str(tmp_path / "store"), run="lit")
    capture = CaptureStart()
    trainer2 = _trainer(io2, dirpath, max_epochs=5, callbacks=[capture])
    trainer2.fit(TinyModule(), _loader(0), _loader(1), ckpt_path="ckpt:latest")
    assert (capture.epoch, capture.step) == (4, 16)
    for k, v in saved["state_dict"].items():
        assert torch.equal(capture.weights[k], v), k
    saved_momentum = [s["momentum_buffer"] for s in saved["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(capture.momentum, saved_momentum))
    assert store.get("lit:latest").epoch == 4

    # Lightning's own "last" finds the last.ckpt pointer; "ckpt:lit@1"-style selectors work too.
    capture3 = CaptureStart()
    trainer3 = _trainer(CkptCheckpointIO(store, run="lit"), dirpath, max_epochs=6, callbacks=[capture3])
    trainer3.fit(TinyModule(), _loader(0), _loader(1), ckpt_path="last")
    assert capture3.epoch == 5
    assert store.get("lit:latest").epoch == 5
    with pytest.raises(FileNotFoundError, match="selector"):
        io2.resolve(str(tmp_path / "nope" / "missing.ckpt"))
    io2.teardown()
    store.close()


def _plain_trainer(io, root, max_epochs, callbacks, **kw):
    return pl.Trainer(max_epochs=max_epochs, plugins=[io], accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(root), callbacks=callbacks, **kw)


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _pointer_ids(*dirs):
    return {json.loads(p.read_text())["checkpoint"] for d in dirs for p in d.iterdir()}


def _deploy_and_resume(full_dir, weights_dir, weights_first):
    full = ModelCheckpoint(dirpath=str(full_dir), monitor="val_loss", save_top_k=1, save_last=True)
    weights = ModelCheckpoint(dirpath=str(weights_dir), save_top_k=-1, save_weights_only=True)
    return [weights, full] if weights_first else [full, weights]


@pytest.mark.parametrize("weights_first", [True, False], ids=["weights-first", "weights-last"])
def test_weights_only_beside_full_at_one_step_are_two_checkpoints(tmp_path, weights_first):
    """Deploy + resume: a weights-only ModelCheckpoint beside a full one with save_last=True. Lightning
    saves them in list order, so either one may be the newest checkpoint at a step."""
    torch.manual_seed(0)
    store = CheckpointStore(tmp_path / "store")
    io = CkptCheckpointIO(store, run="deploy")
    full_dir, weights_dir = tmp_path / "full", tmp_path / "weights"
    callbacks = _deploy_and_resume(full_dir, weights_dir, weights_first)
    trainer = _plain_trainer(io, tmp_path, 3, [*callbacks, io.metrics_callback()])
    trainer.fit(TinyModule(), _loader(0), _loader(1))
    final = _weights(trainer.lightning_module)

    last = io.load_checkpoint(str(full_dir / "last.ckpt"))
    assert "optimizer_states" in last and "lr_schedulers" in last and _same(last["state_dict"], final)
    deployed = io.load_checkpoint(str(weights_dir / "epoch=2-step=12.ckpt"))
    assert "optimizer_states" not in deployed and _same(deployed["state_dict"], final)
    fresh = TinyModule()
    fresh.load_state_dict(deployed["state_dict"])  # the weights-only file loads the weights
    assert _same(_weights(fresh), final)

    # Two checkpoints at the last step, one per state; every file names its own, nothing is left over.
    at_end = {i.variant: i for i in store.list("deploy") if i.step == 12}
    assert set(at_end) == {"", WEIGHTS} and at_end[""].id != at_end[WEIGHTS].id
    assert {i.variant for i in store.list("deploy")} == {"", WEIGHTS}
    assert _pointer_ids(full_dir, weights_dir) == {i.id for i in store.list("deploy")}
    assert io.resolve(str(full_dir / "last.ckpt")) == at_end[""].id
    # Selectors given to Lightning prefer the full checkpoint where a weights-only one competes.
    assert io.resolve("ckpt:latest") == at_end[""].id
    assert io.resolve("ckpt:deploy@2") == at_end[""].id
    assert io.resolve(f"ckpt:{at_end[WEIGHTS].id[:12]}") == at_end[WEIGHTS].id  # an id is obeyed
    # ModelCheckpoint(monitor="val_loss") declared the run's objective: "best" just works.
    run = next(r for r in store.runs() if r.name == "deploy")
    assert (run.objective, run.mode) == ("val_loss", "min")
    best = store.get("best")
    assert best.variant == "" and best.metrics["val_loss"] == min(
        i.metrics["val_loss"] for i in store.list("deploy") if "val_loss" in i.metrics)

    # map_location as torch.load takes it: a dict of locations, a callable.
    for location in ({"cuda:0": "cpu"}, lambda storage, loc: storage, torch.device("cpu")):
        moved = io.load_checkpoint(str(full_dir / "last.ckpt"), map_location=location)
        assert _same(moved["state_dict"], final)

    # Resume from last.ckpt in a new process-like setting: optimizer and schedulers come back.
    io2 = CkptCheckpointIO(str(tmp_path / "store"), run="deploy")
    capture = CaptureStart()
    trainer2 = _plain_trainer(io2, tmp_path, 4, [*_deploy_and_resume(full_dir, weights_dir, weights_first),
                                                 io2.metrics_callback(), capture])
    trainer2.fit(TinyModule(), _loader(0), _loader(1), ckpt_path=str(full_dir / "last.ckpt"))
    assert (capture.epoch, capture.step) == (3, 12) and _same(capture.weights, final)
    saved_momentum = [s["momentum_buffer"] for s in last["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(capture.momentum, saved_momentum))
    resumed = [i for i in store.list("deploy") if i.epoch == 3 and i.variant == ""]
    assert len(resumed) == 1 and resumed[0].parent == at_end[""].id  # lineage goes through the full one
    io2.teardown()
    store.close()


class SaveTwiceAtOneStep(pl.Callback):
    """Saves three files at one (epoch, step): two of one state, then one after changing the weights."""

    def __init__(self, dirpath):
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        trainer.save_checkpoint(self.dirpath / "a.ckpt")
        trainer.save_checkpoint(self.dirpath / "a-again.ckpt")
        self.before = _weights(pl_module)
        pl_module.head.weight.data.add_(1.0)  # through .data: no autograd version bump to notice
        trainer.save_checkpoint(self.dirpath / "b.ckpt")
        self.after = _weights(pl_module)
        pl_module.head.weight.data.sub_(1.0)


def test_one_step_saved_twice_in_a_fit_aliases_identical_states_only(tmp_path):
    torch.manual_seed(0)
    store = CheckpointStore(tmp_path / "store")
    io = CkptCheckpointIO(store, run="twice")
    saver = SaveTwiceAtOneStep(tmp_path / "files")
    trainer = _plain_trainer(io, tmp_path, 2, [saver], enable_checkpointing=False)
    trainer.fit(TinyModule(), _loader(0), _loader(1))
    a, again, b = (io.resolve(str(tmp_path / "files" / n)) for n in ("a.ckpt", "a-again.ckpt", "b.ckpt"))
    assert a == again != b
    at_step = {i.id: i for i in store.list("twice") if i.step == 8}
    assert set(at_step) == {a, b} and at_step[a].variant == "" and at_step[b].variant == "b"
    assert _same(io.load_checkpoint(str(tmp_path / "files" / "a.ckpt"))["state_dict"], saver.before)
    assert _same(io.load_checkpoint(str(tmp_path / "files" / "b.ckpt"))["state_dict"], saver.after)
    assert store.verify(full=False).ok
    store.close()


def _sweep_fit(io, dirpath, lr, callback=True, max_epochs=2):
    torch.manual_seed(int(lr * 1000))
    callbacks = [ModelCheckpoint(dirpath=str(dirpath), save_top_k=-1)] + ([io.metrics_callback()] if callback else [])
    trainer = _plain_trainer(io, dirpath.parent, max_epochs, callbacks)
    trainer.fit(TinyModule(lr=lr), _loader(0), _loader(1))
    return _weights(trainer.lightning_module)


def test_a_plugin_reused_for_a_sweep_never_answers_for_another_fit(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    io = CkptCheckpointIO(store, run="sweep")
    first = _sweep_fit(io, tmp_path / "t1", lr=0.01)
    first_ids = {i.id for i in store.list("sweep")}

    # The same run from scratch: refused before it trains (the callback saw the fit start).
    with pytest.raises(DuplicateCheckpointError, match=r"io\.run = 'NAME'"):
        _sweep_fit(io, tmp_path / "t2", lr=0.5)
    assert not list((tmp_path / "t2").glob("*.ckpt")) and {i.id for i in store.list("sweep")} == first_ids

    # A run per fit, as the error advises: each fit's epoch=1-step=8.ckpt restores that fit's weights.
    io.run = "sweep-2"
    second = _sweep_fit(io, tmp_path / "t2", lr=0.5)
    assert not _same(first, second)
    assert _same(io.load_checkpoint(str(tmp_path / "t1" / "epoch=1-step=8.ckpt"))["state_dict"], first)
    assert _same(io.load_checkpoint(str(tmp_path / "t2" / "epoch=1-step=8.ckpt"))["state_dict"], second)
    assert {i.id for i in store.list("sweep")} == first_ids

    # Without the metrics callback the new fit shows as the global step going back: refused at its
    # first save, before anything is written.
    bare = CkptCheckpointIO(store, run="bare")
    _sweep_fit(bare, tmp_path / "b1", lr=0.01, callback=False)
    before = {i.id for i in store.list("bare")}
    with pytest.raises(DuplicateCheckpointError, match="earlier fit"):
        _sweep_fit(bare, tmp_path / "b2", lr=0.5, callback=False)
    assert not list((tmp_path / "b2").glob("*.ckpt")) and {i.id for i in store.list("bare")} == before

    # A fresh plugin in another process is told the same: that (epoch, step) is another fit's.
    other = CkptCheckpointIO(str(tmp_path / "store"), run="sweep")
    with pytest.raises(DuplicateCheckpointError, match="did not save"):
        _sweep_fit(other, tmp_path / "t3", lr=0.5)
    assert {i.id for i in store.list("sweep")} == first_ids
    other.teardown()
    store.close()


def test_objective_from_monitor_and_mode_without_the_callback(tmp_path):
    torch.manual_seed(0)
    store = CheckpointStore(tmp_path / "store")
    io = CkptCheckpointIO(store, run="maxed")
    mc = ModelCheckpoint(dirpath=str(tmp_path / "c"), monitor="neg_loss", mode="max", save_top_k=-1)
    _plain_trainer(io, tmp_path, 3, [mc]).fit(TinyModule(), _loader(0), _loader(1))
    run = next(r for r in store.runs() if r.name == "maxed")
    assert (run.objective, run.mode) == ("neg_loss", "max")
    infos = store.list("maxed")
    assert store.get("best").id == max(infos, key=lambda i: i.metrics["neg_loss"]).id
    assert io.resolve("ckpt:best") == store.get("best").id

    # An objective declared before (ckpt objective / set_objective) is the user's choice: kept.
    store.set_objective("declared", "val_loss", "min")
    io2 = CkptCheckpointIO(store, run="declared")
    mc2 = ModelCheckpoint(dirpath=str(tmp_path / "d"), monitor="neg_loss", mode="max", save_top_k=-1)
    _plain_trainer(io2, tmp_path, 1, [mc2, io2.metrics_callback()]).fit(TinyModule(), _loader(0), _loader(1))
    run = next(r for r in store.runs() if r.name == "declared")
    assert (run.objective, run.mode) == ("val_loss", "min")
    store.close()
