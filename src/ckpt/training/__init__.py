"""Reference training loop built on the store: exact resume, early stopping, best-model restore.

    from ckpt.training import fit, seed_everything
    seed_everything(0)
    result = fit(model, opt, train_loader, evaluate, store="checkpoints/", run="mlp", max_epochs=50,
                 monitor="val_acc", patience=5, save_every_steps=200, retention=dict(keep_last=3, keep_best=2))

Modules, one job each: ``loop`` (fit/Trainer), ``rng`` (every generator), ``data`` (loader order,
mid-epoch position, random splits), ``early_stopping``, ``signals`` (SIGTERM/SIGINT), ``resume`` (which
checkpoint to continue from), ``guard`` (what defines a run, and the check that an edited script does not
silently resume the old one), ``history`` (metric curves), ``transfer`` (pretrained weights into a new
model), ``progress`` (tqdm bar and epoch lines).
"""

from ckpt.training.data import DataSplit
from ckpt.training.early_stopping import EarlyStopping
from ckpt.training.guard import RunMismatchError
from ckpt.training.history import History, plot_history
from ckpt.training.loop import FitResult, Trainer, fit
from ckpt.training.rng import capture as capture_rng_state
from ckpt.training.rng import restore as restore_rng_state
from ckpt.training.rng import seed_everything
from ckpt.training.signals import StopSignals
from ckpt.training.transfer import (TransferReport, canonical_key, freeze, load_pretrained, remap_keys,
                                    trainable_parameters, unfreeze)

__all__ = [
    "fit", "Trainer", "FitResult", "RunMismatchError", "EarlyStopping", "History", "plot_history", "DataSplit",
    "seed_everything", "capture_rng_state", "restore_rng_state", "StopSignals",
    "load_pretrained", "TransferReport", "remap_keys", "canonical_key", "freeze", "unfreeze",
    "trainable_parameters",
]
