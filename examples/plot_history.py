"""Training and validation curves from the store to a PNG.

Every checkpoint `fit` writes carries the whole metric history of its run, so the curves survive
retention (pruned checkpoints take their index rows with them, not the history). The index has each
kept checkpoint's metrics too: `ckpt plot val_loss -o curve.png` draws those from the command line.

    python examples/plot_history.py [--store DIR] [--run RUN] [-o curves.png]

With a store that holds the run (e.g. the store examples/early_stopping.py printed, --run elec-mlp) it
only reads it. Otherwise it first trains a small, deliberately overfitting model so there is something to
see, in a new folder: DIR/store when DIR is new, empty or was made by an example, else a new folder under
the system temp directory; a DIR holding anything else is refused and left untouched. The PNG goes next to
the store it trained (default), or to -o, which must not exist yet unless --overwrite.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore
from ckpt.training import History, fit, plot_history, seed_everything

from _folders import line_buffered_stdout, new_file, new_folder


def train_small(store: CheckpointStore, run: str) -> None:
    """Few samples, a wide network and noisy labels: validation loss turns up while training loss
    keeps falling, and early stopping catches it."""
    torch.set_num_threads(1)
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = ((x[:, :3].sum(1) + 0.8 * torch.randn(600, generator=g)) > 0).long()
    train, val = TensorDataset(x[:240], y[:240]), TensorDataset(x[240:], y[240:])
    model = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))

    def evaluate(m: nn.Module) -> dict[str, float]:
        out = m(val.tensors[0])
        return {"val_loss": nn.functional.cross_entropy(out, val.tensors[1]).item(),
                "val_acc": (out.argmax(1) == val.tensors[1]).float().mean().item()}

    fit(model, torch.optim.Adam(model.parameters(), lr=3e-3),
        DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)), evaluate,
        store=store, run=run, max_epochs=40, monitor="val_loss", patience=6, retention=dict(keep_last=2, keep_best=1),
        verbose=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", metavar="DIR", help="a store holding --run (only read), or a folder to train one in: "
                                                   "new, empty or made by an example (default: a new folder under "
                                                   "the temp directory)")
    ap.add_argument("--run", default="overfit-mlp")
    ap.add_argument("-o", "--output", help="the PNG to write (default: next to the store)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    args = ap.parse_args()
    line_buffered_stdout()
    output = new_file(args.output, overwrite=args.overwrite) if args.output else None

    store = None
    if args.store is not None and CheckpointStore.exists(args.store):
        store = CheckpointStore(args.store, readonly=True)
        if args.run not in {r.name for r in store.runs()}:
            store.close()
            store = None
    if store is not None:
        print(f"reading run {args.run!r} from {args.store} (read-only)")
        output = output or os.path.join(tempfile.mkdtemp(prefix="ckpt-plot_history-"), "training_curves.png")
    else:
        store_dir = new_folder(args.store, "plot_history")
        print(f"no run {args.run!r} to read: training one in {store_dir} (a new folder)")
        store = CheckpointStore(store_dir)
        train_small(store, args.run)
        output = output or os.path.join(os.path.dirname(store_dir), f"{os.path.basename(store_dir)}-curves.png")
    hist = History.from_store(store, args.run)
    latest = store.load(f"{args.run}:latest", key="early_stopping")
    monitor = latest["monitor"] if latest else None
    best = store.best(monitor, run=args.run) if monitor else None
    stopped = latest["stopped_epoch"] if latest else None

    print(f"run {args.run!r}: {len(hist)} epochs in the history, {len(store.list(run=args.run))} checkpoints "
          f"kept in the store")
    names = hist.metrics()
    print("epoch  " + "  ".join(f"{m:>10}" for m in names))
    for rec in hist:
        print(f"{rec['epoch']:>5}  " + "  ".join(f"{rec.get(m, float('nan')):>10.4g}" for m in names))
    plot_history(hist, output, best_epoch=best.epoch if best else None, stopped_epoch=stopped,
                 title=f"{args.run}: training and validation curves")
    print(f"\nwrote {output}" + (f" (best epoch {best.epoch} by {monitor} marked)" if best else ""))


if __name__ == "__main__":
    main()
