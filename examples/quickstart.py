"""Quickstart: train a small classifier, checkpoint every epoch, restore the best, look at the store.

    python examples/quickstart.py [DIR]

The store goes into a new folder: DIR/store (DIR/store-2 on the next run...) when DIR is new, empty or was
made by an example, else a new folder under the system temp directory; a DIR holding anything else is
refused and left untouched (see examples/_folders.py).
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import torch
from torch import nn

from ckpt import CheckpointStore

from _folders import line_buffered_stdout, new_folder


def make_data(n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, generator=g)
    y = ((x @ w + 0.5 * torch.randn(n, generator=g)) > 0).long()
    return x, y


def main() -> None:
    line_buffered_stdout()
    store_dir = new_folder(sys.argv[1] if len(sys.argv) > 1 else None, "quickstart")
    print(f"store: {store_dir} (a new folder)")
    store = CheckpointStore(store_dir)
    run = "mlp-demo"
    store.set_objective(run, "val_acc", "max")

    torch.manual_seed(0)
    x, y = make_data()
    xt, yt, xv, yv = x[:1536], y[:1536], x[1536:], y[1536:]
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    for epoch in range(8):
        model.train()
        for i in range(0, len(xt), 128):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[i:i + 128]), yt[i:i + 128])
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.cross_entropy(model(xv), yv).item()
            val_acc = (model(xv).argmax(1) == yv).float().mean().item()
        info = store.save(run, epoch, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            "epoch": epoch,
        }, {"val_acc": val_acc, "val_loss": val_loss})
        print(f"epoch {epoch}: val_acc={val_acc:.3f} val_loss={val_loss:.3f} -> {info.short_id} "
              f"({info.new_bytes} bytes written)")

    best = store.best()
    print(f"\nbest checkpoint: {best.short_id} epoch {best.epoch} val_acc={best.metrics['val_acc']:.3f}")
    report = store.load_into(model, "best")
    print(f"restored {report.loaded} tensors of the best model in place")

    # Fine-tuning with a frozen backbone: later saves only store what changed.
    for p in model[0].parameters():
        p.requires_grad_(False)
    head_opt = torch.optim.SGD(model[2].parameters(), lr=1e-3)
    for epoch in range(8, 10):
        head_opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        head_opt.step()
        info = store.save("mlp-finetune", epoch, {"model": model.state_dict()}, {"val_acc": val_acc},
                          parent=best)
        print(f"fine-tune epoch {epoch}: {info.logical_size} bytes of state, {info.new_bytes} written")

    state = store.load("mlp-demo@2")
    assert isinstance(state["optimizer"]["state"], dict) and 0 in state["optimizer"]["state"]
    print(f"\nverify: {'ok' if store.verify().ok else 'PROBLEMS'}")

    cli = [sys.executable, "-m", "ckpt.cli", "--store", store_dir]
    print("\n$ ckpt ls --sort val_acc --limit 3")
    subprocess.run(cli + ["ls", "--sort", "val_acc", "--limit", "3"], check=True)
    print("$ ckpt show best:val_acc")
    subprocess.run(cli + ["show", "best:val_acc"], check=True)
    print(f"\nstore kept at {store_dir}")


if __name__ == "__main__":
    main()
