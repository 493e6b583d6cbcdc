"""Stores for the browser tests of ``ckpt ui`` (tests/test_ui.py), made with the real training loop.

    python ui_store.py build DIR [INDEX_URL]      pretrain (6 epochs, keep_last=2: pruned epochs in its
                                                  history), finetune (from pretrain:best, frozen backbone),
                                                  a failed run, a crashed run (saving process killed)
    python ui_store.py train DIR RUN EPOCHS PAUSE [INDEX_URL]
                                                  a run that trains EPOCHS epochs, PAUSE seconds each
    python ui_store.py crash DIR RUN [INDEX_URL]  save one checkpoint, then die without finishing the run
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore
from ckpt.training import fit, freeze, load_pretrained, seed_everything, trainable_parameters


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def data(classes: int, seed: int = 0) -> tuple[DataLoader, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 8, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, classes, (240,), generator=g)
    x = centers[y] + 1.3 * torch.randn(240, 8, generator=g)
    train = TensorDataset(x[:200], y[:200])
    return DataLoader(train, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0)), \
        TensorDataset(x[200:], y[200:])


def evaluator(val: TensorDataset, pause: float = 0.0, fail_at: int | None = None):  # type: ignore[no-untyped-def]
    calls = [0]

    def evaluate(model: nn.Module) -> dict[str, float]:
        calls[0] += 1
        if fail_at is not None and calls[0] >= fail_at:
            raise RuntimeError("simulated failure in evaluation")
        if pause:
            time.sleep(pause)
        x, y = val.tensors
        with torch.no_grad():
            out = model(x)
        return {"val_loss": nn.functional.cross_entropy(out, y).item(),
                "val_acc": (out.argmax(1) == y).float().mean().item()}
    return evaluate


def open_store(path: str, index: str | None) -> CheckpointStore:
    return CheckpointStore(path, index=index or None)


def build(path: str, index: str | None = None) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    store = open_store(path, index)
    loader, val = data(3)
    model = Net(3)
    fit(model, torch.optim.Adam(model.parameters(), lr=1e-2), loader, evaluator(val), store=store, run="pretrain",
        max_epochs=6, monitor="val_acc", patience=None, retention=dict(keep_last=2), verbose=False,
        progress=False, handle_signals=False)
    ft = Net(2)
    report = load_pretrained(ft, store, "pretrain:best")
    freeze(ft.backbone)
    loader2, val2 = data(2, seed=1)
    fit(ft, torch.optim.Adam(trainable_parameters(ft), lr=3e-2), loader2, evaluator(val2), store=store,
        run="finetune", max_epochs=4, monitor="val_loss", mode="min", patience=None, parent=report.checkpoint,
        verbose=False, progress=False, handle_signals=False)
    store.tag("finetune:best", "paper-v1")
    bad = Net(3)
    try:
        fit(bad, torch.optim.SGD(bad.parameters(), lr=0.1), loader, evaluator(val, fail_at=3), store=store,
            run="failed-run", max_epochs=5, monitor="val_acc", patience=None, verbose=False, progress=False,
            handle_signals=False)
    except RuntimeError:
        pass
    store.close()


def train(path: str, run: str, epochs: int, pause: float, index: str | None = None) -> None:
    torch.set_num_threads(1)
    seed_everything(1)
    store = open_store(path, index)
    loader, val = data(3, seed=2)
    model = Net(3)
    fit(model, torch.optim.Adam(model.parameters(), lr=1e-2), loader, evaluator(val, pause), store=store, run=run,
        max_epochs=epochs, monitor="val_acc", patience=None, verbose=False, progress=False, handle_signals=False)
    store.close()


def crash(path: str, run: str, index: str | None = None) -> None:
    store = open_store(path, index)
    store.save(run, 0, {"model": Net(3).state_dict()}, {"val_acc": 0.1})
    os._exit(0)  # no atexit: the run stays "running" with a dead pid, i.e. crashed


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "build":
        build(args[0], args[1] if len(args) > 1 else None)
    elif cmd == "train":
        train(args[0], args[1], int(args[2]), float(args[3]), args[4] if len(args) > 4 else None)
    elif cmd == "crash":
        crash(args[0], args[1], args[2] if len(args) > 2 else None)
    else:
        raise SystemExit(__doc__)
