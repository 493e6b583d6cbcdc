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
from ckpt.integrations.lightning import POINTER_FORMAT, CkptCheckpointIO  # noqa: E402


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
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

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
