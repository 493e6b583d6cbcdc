"""Kill training with SIGKILL mid-epoch, resume it, and check it ends exactly like a run never killed.

A tutorial resume (`model.load_state_dict(...)`, `start_epoch = ckpt["epoch"] + 1`) loses the RNG
states, the shuffling order and the position inside the epoch, so the resumed run drifts away from the
one that was not interrupted. `fit` saves all of it, every epoch and every `save_every_steps` steps.

    python examples/resume_after_crash.py [--store DIR] [--kill-at-step N]

Its two stores go into a new folder: DIR/run (DIR/run-2 on the next run...) when DIR is new, empty or was
made by an example, else a new folder under the system temp directory; a DIR holding anything else is
refused and left untouched (see examples/_folders.py).

1. a child process trains and is SIGKILLed at a random step (no chance to save or clean up);
2. this process runs the same training with resume="auto" and finishes the run;
3. the same training runs uninterrupted, in a separate store;
4. the two final checkpoints are compared: weights, optimizer, scheduler, RNG states, metric history
   and early-stopping state must be bit-identical.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ckpt import CheckpointStore
from ckpt.training import DataSplit, fit, seed_everything

from _folders import line_buffered_stdout, new_folder

RUN = "spiral-mlp"
EPOCHS = 10
SAVE_EVERY = 8  # steps; an epoch has 23


class Spiral(Dataset):
    """Three interleaved spirals, with random jitter added each time a point is read (augmentation
    that draws from NumPy's and Python's global generators, as many real pipelines do)."""

    def __init__(self, n: int = 1800) -> None:
        g = np.random.default_rng(1)
        k = np.arange(n) % 3
        r = np.linspace(0.05, 1, n)
        t = k * 2 * np.pi / 3 + 4 * r + g.normal(0, 0.15, n)
        self.x = torch.tensor(np.stack([r * np.sin(t), r * np.cos(t)], 1), dtype=torch.float32)
        self.y = torch.tensor(k)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        jitter = torch.from_numpy(np.random.normal(0, 0.02, 2).astype(np.float32))
        flip = -1.0 if random.random() < 0.05 else 1.0
        return self.x[i] * flip + jitter, self.y[i]


def train(store_dir: str, kill_at_step: int | None = None, verbose: bool = True):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    seed_everything(0)
    split = DataSplit(Spiral(), [0.8, 0.2], seed=0)  # its indices are saved in every checkpoint too
    loader = DataLoader(split.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=EPOCHS * len(loader))

    def evaluate(m: nn.Module) -> dict[str, float]:
        xs, ys = split.dataset.x[split.val.indices], split.dataset.y[split.val.indices]
        out = m(xs)
        return {"val_loss": nn.functional.cross_entropy(out, ys).item(),
                "val_acc": (out.argmax(1) == ys).float().mean().item()}

    class KillAt:
        def on_step_end(self, trainer):  # type: ignore[no-untyped-def]
            if trainer.global_step == kill_at_step:
                print(f"  [child] SIGKILL at step {trainer.global_step} (epoch {trainer.epoch}, batch "
                      f"{trainer.batches_done} of {len(loader)})", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    return fit(model, opt, loader, evaluate, store=store_dir, run=RUN, max_epochs=EPOCHS, monitor="val_acc",
               patience=3, scheduler=sched, scheduler_interval="step", split=split, save_every_steps=SAVE_EVERY,
               callbacks=[KillAt()], verbose=verbose)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", metavar="DIR", help="a new or empty folder, or one an example made (default: a new "
                                                   "folder under the temp directory)")
    ap.add_argument("--kill-at-step", type=int, help="default: a random step")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        train(args.store, args.kill_at_step)
        return

    line_buffered_stdout()
    work = new_folder(args.store, "resume_after_crash", "run")
    print(f"stores: {work}/crashed and {work}/reference (a new folder)\n")
    crashed, reference = os.path.join(work, "crashed"), os.path.join(work, "reference")
    kill_at = args.kill_at_step or random.randrange(SAVE_EVERY + 1, 3 * 23)
    child = [sys.executable, os.path.abspath(__file__), "--store", crashed, "--child"]

    print(f"1. training in a child process, killed with SIGKILL at step {kill_at}")
    p = subprocess.run(child + ["--kill-at-step", str(kill_at)])
    print(f"   child exit status {p.returncode} ({'SIGKILL' if p.returncode == -signal.SIGKILL else '?'})")
    assert p.returncode == -signal.SIGKILL, "the child was supposed to die by SIGKILL"
    store = CheckpointStore(crashed)
    last = store.latest(RUN)
    status = {r.name: r.status for r in store.runs()}[RUN]
    print(f"   the store's latest checkpoint: epoch {last.epoch}, step {last.step}; run status: {status}")
    store.close()

    print("\n2. resuming with resume='auto' (in this process: any process that opens the store can)")
    train(crashed)

    print("\n3. the same training, never interrupted (separate store)")
    result = train(reference, verbose=False)
    print(f"   {result.stop_reason} after {result.epochs} epochs, best epoch {result.best.epoch}")

    print("\n4. comparing the two runs' final checkpoints")
    a, b = CheckpointStore(crashed), CheckpointStore(reference)
    diffs = compare(a.load(f"{RUN}:latest"), b.load(f"{RUN}:latest"))
    best_a, best_b = a.best("val_acc", run=RUN), b.best("val_acc", run=RUN)
    for part in ("model", "optimizer", "scheduler", "rng", "data", "history", "early_stopping", "loop"):
        print(f"   {part:<15} {'identical' if not any(d.startswith(part) for d in diffs) else 'DIFFERENT'}")
    print(f"   best epoch      {best_a.epoch} vs {best_b.epoch}")
    same = not diffs and best_a.epoch == best_b.epoch and best_a.metrics == best_b.metrics
    print(f"\nresumed run bit-identical to the uninterrupted one: {'yes' if same else 'NO: ' + ', '.join(diffs[:5])}")
    if not same:
        sys.exit(1)


def compare(a, b, path: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    """Paths where two saved states differ (exact: tensor bits, array bits, values, types)."""
    if type(a) is not type(b):
        return [path or "/"]
    if isinstance(a, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [path]
    if isinstance(a, np.ndarray):
        return [] if a.dtype == b.dtype and np.array_equal(a, b) else [path]
    if isinstance(a, dict):
        if list(a) != list(b):
            return [path]
        return [d for k in a for d in compare(a[k], b[k], f"{path}/{k}" if path else str(k))]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in compare(x, y, f"{path}/{i}")]
    return [] if a == b or (a != a and b != b) else [path]


if __name__ == "__main__":
    main()
