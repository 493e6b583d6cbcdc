"""The end-to-end story of ckpt in one minute: train with checkpoints, get preempted, resume, stop early,
then look at the store from the command line.

    python examples/demo.py [DIR]        (or: bash scripts/demo.sh [DIR], which sets up .venv first)

It writes only into a new folder: DIR/store (DIR/store-2 on the next run...) when DIR is new, empty or was
made by an example; without DIR, a new folder under the system temp directory. A DIR that holds anything
else is refused and left untouched (see examples/_folders.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore
from ckpt.training import fit, seed_everything

from _folders import ckpt_command, line_buffered_stdout, new_folder

RUN = "mlp-demo"


def make_data() -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 20, generator=g)
    w = torch.randn(20, generator=g)
    y = ((x @ w + 0.3 * (x[:, :5] ** 2).sum(1) - 1.5 + torch.randn(3000, generator=g)) > 0).long()
    return TensorDataset(x[:2400], y[:2400]), (x[2400:], y[2400:])


def train(store_dir: str, preempt_at_epoch: int | None = None):  # type: ignore[no-untyped-def]
    seed_everything(0)
    train_set, (xv, yv) = make_data()
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def evaluate(m: nn.Module) -> dict[str, float]:
        out = m(xv)
        return {"val_acc": (out.argmax(1) == yv).float().mean().item(),
                "val_loss": nn.functional.cross_entropy(out, yv).item()}

    class Preemption:  # what a cluster scheduler does: SIGTERM in the middle of an epoch
        def on_step_end(self, trainer):  # type: ignore[no-untyped-def]
            if trainer.epoch == preempt_at_epoch and trainer.batches_done == 10:
                os.kill(os.getpid(), signal.SIGTERM)

    return fit(model, opt, loader, evaluate, store=store_dir, run=RUN, max_epochs=40, monitor="val_acc",
               patience=3, save_every_steps=20, retention=dict(keep_last=3, keep_best=2),
               callbacks=[Preemption()] if preempt_at_epoch is not None else [])


def sh(store_dir: str, *args: str) -> None:
    print(f"\n$ ckpt {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "ckpt.cli", "--store", store_dir, *args], check=True)


def main() -> None:
    line_buffered_stdout()
    store_dir = new_folder(sys.argv[1] if len(sys.argv) > 1 else None, "demo")
    print(f"The store: {store_dir} (a new folder)\n")

    print("1. Training starts; the scheduler preempts it (SIGTERM) in the middle of epoch 3.")
    p = subprocess.run([sys.executable, __file__, store_dir, "--child"])
    print(f"   training process exited with status {p.returncode} (143 = stopped by SIGTERM, state saved)")

    store = CheckpointStore(store_dir)
    last = store.latest(RUN)
    print(f"   latest checkpoint: epoch {last.epoch}, step {last.step}; run status: "
          f"{[r.status for r in store.runs() if r.name == RUN][0]}")

    print("\n2. The same script runs again: resume='auto' continues at the exact batch, then stops early.")
    result = train(store_dir)
    print(f"   stopped: {result.stop_reason} after epoch {result.epochs - 1}; best epoch {result.best.epoch} "
          f"(val_acc {result.best.metrics['val_acc']:.3f}) is back in the model")

    print("\n3. The store, from the command line:")
    sh(store_dir, "runs")
    sh(store_dir, "ls", "--sort", "val_acc", "--limit", "5")
    sh(store_dir, "diff", f"{RUN}:latest", "best")
    out = os.path.join(store_dir, "best-model.pt")
    sh(store_dir, "restore", "best", "--only", "model", "-o", out)
    weights = torch.load(out, weights_only=True)
    print(f"\nplain torch.load(weights_only=True) of {os.path.basename(out)}: {len(weights)} tensors, "
          f"e.g. {next(iter(weights))} {tuple(next(iter(weights.values())).shape)}")
    print(f"\nstore kept at {store_dir}; look at it with: {ckpt_command()} --store {store_dir} ls")


if __name__ == "__main__":
    if "--child" in sys.argv:
        train(sys.argv[1], preempt_at_epoch=3)
    else:
        main()
