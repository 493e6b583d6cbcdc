"""Early stopping and best-model restore: a binary classifier on electricity-market data.

The tutorial version of this keeps `best_loss` in a variable, saves `best.pth` by hand and counts
epochs without improvement. Here `fit` does it from the store: every epoch is a checkpoint, "best" is
the index's answer (so it survives restarts), retention keeps the last 3 and the best 2, and at the
end the best weights are back in the model.

Data: the default is generated locally in the shape of OpenML's "electricity" dataset (Elec2: half-hourly
NSW/VIC prices and demand, label UP/DOWN = price above its last-24-hours average). To use the real data,
download it yourself (OpenML id 151, ARFF or CSV) and pass its path:

    python examples/early_stopping.py [--store DIR] [--data electricity.arff|electricity.csv]

The store goes into a new folder: DIR/store (DIR/store-2 on the next run...) when DIR is new, empty or was
made by an example, else a new folder under the system temp directory; a DIR holding anything else is
refused and left untouched (see examples/_folders.py).
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore
from ckpt.training import DataSplit, fit, seed_everything

from _folders import ckpt_command, line_buffered_stdout, new_folder

FEATURES = ["date", "day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]


# -- data -------------------------------------------------------------------------------------------
def synthetic_electricity(days: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half-hourly demand with daily peaks and quieter weekends, prices that rise steeply with demand
    and spike now and then, and the Elec2 label: is the NSW price above its previous-24-hours mean?
    Every column is scaled to [0, 1] like the normalized Elec2 release."""
    rng = np.random.default_rng(seed)
    n = days * 48
    t = np.arange(n)
    day_idx, hours = t // 48, (t % 48) / 2
    dow = (day_idx + 2) % 7 + 1  # 1..7 like Elec2's nominal "day"
    weekend = np.isin(dow, (1, 7))

    def ar(sigma: float, phi: float = 0.97) -> np.ndarray:
        e = rng.normal(0, sigma, n)
        out = np.empty(n)
        acc = 0.0
        for i in range(n):
            acc = phi * acc + e[i]
            out[i] = acc
        return out

    daily = (0.5 + 0.22 * np.exp(-((hours - 8.5) / 2.0) ** 2) + 0.28 * np.exp(-((hours - 18.5) / 2.5) ** 2)
             - 0.18 * np.exp(-((hours - 3.5) / 3.0) ** 2))
    season = 0.08 * np.sin(2 * np.pi * day_idx / 91)
    nswdemand = daily - 0.07 * weekend + season + ar(0.02)
    spikes = (rng.random(n) < 0.01) * rng.exponential(0.5, n)
    nswprice = 0.05 + 0.9 * np.clip(nswdemand - 0.45, 0, None) ** 2 + np.abs(ar(0.01)) + spikes
    vicdemand = 0.75 * nswdemand + 0.1 + ar(0.015)
    vicprice = 0.85 * nswprice + 0.02 + np.abs(ar(0.008))
    transfer = 0.5 + 2.0 * (vicprice - nswprice) + ar(0.02)
    past = np.convolve(nswprice, np.ones(48) / 48, mode="full")[:n]  # mean of the last 48 periods
    past[:48] = np.cumsum(nswprice)[:48] / np.arange(1, 49)
    label = (nswprice > past).astype(np.float32)
    cols = [t / (n - 1), (dow - 1) / 6, (t % 48) / 47, nswprice, nswdemand, vicprice, vicdemand, transfer]
    x = np.stack([(c - c.min()) / (c.max() - c.min() + 1e-12) for c in cols], axis=1).astype(np.float32)
    return x, label


def load_electricity(path: str) -> tuple[np.ndarray, np.ndarray]:
    """OpenML "electricity" (Elec2) from a local ARFF or CSV file: 8 features, class UP=1 / DOWN=0.
    Rows with missing values ('?') are dropped; the nominal "day" (1..7) is scaled to [0, 1]."""
    with open(path, newline="") as f:
        if path.lower().endswith(".arff"):
            names, rows = _read_arff(f)
        else:
            reader = csv.reader(f)
            names = [h.strip().strip("'\"") for h in next(reader)]
            rows = [r for r in reader if r]
    missing = [c for c in FEATURES + ["class"] if c not in names]
    if missing:
        raise SystemExit(f"{path}: columns {missing} not found (have {names}); expected OpenML electricity")
    col = {c: names.index(c) for c in FEATURES + ["class"]}
    xs, ys = [], []
    for r in rows:
        r = [v.strip().strip("'\"") for v in r]
        if "?" in r:
            continue
        x = [float(r[col[c]]) for c in FEATURES]
        x[1] = (x[1] - 1) / 6
        xs.append(x)
        ys.append(1.0 if r[col["class"]].upper() == "UP" else 0.0)
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32)


def _read_arff(f) -> tuple[list[str], list[list[str]]]:  # type: ignore[no-untyped-def]
    names: list[str] = []
    lines = iter(f)
    for line in lines:
        s = line.strip()
        if not s or s.startswith("%"):
            continue
        low = s.lower()
        if low.startswith("@attribute"):
            rest = s[len("@attribute"):].strip()
            if rest[0] in "'\"":
                names.append(rest[1:rest.index(rest[0], 1)])
            else:
                names.append(rest.split()[0])
        elif low.startswith("@data"):
            break
    rows = [next(csv.reader([line])) for line in lines if line.strip() and not line.lstrip().startswith("%")]
    return names, rows


# -- model and evaluation ---------------------------------------------------------------------------
def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(len(FEATURES), 64), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1), nn.Flatten(0))


def metrics(model: nn.Module, ds, prefix: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    x, y = ds.dataset.tensors[0][ds.indices], ds.dataset.tensors[1][ds.indices]
    logits = model(x)
    return {f"{prefix}_loss": nn.functional.binary_cross_entropy_with_logits(logits, y).item(),
            f"{prefix}_acc": ((logits > 0).float() == y).float().mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", metavar="DIR", help="a new or empty folder, or one an example made (default: a new "
                                                   "folder under the temp directory)")
    ap.add_argument("--data", help="a local copy of OpenML 'electricity' (ARFF or CSV)")
    ap.add_argument("--max-epochs", type=int, default=60)
    args = ap.parse_args()

    line_buffered_stdout()
    store_dir = new_folder(args.store, "early_stopping")
    print(f"store: {store_dir} (a new folder)")
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on many
    seed_everything(0)
    x, y = load_electricity(args.data) if args.data else synthetic_electricity()
    print(f"data: {len(y)} rows, {x.shape[1]} features, {y.mean():.0%} UP"
          + (f" (from {args.data})" if args.data else " (generated; --data PATH for the real Elec2)"))
    split = DataSplit(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), [0.7, 0.15, 0.15], seed=0)
    train, val, test = split
    loader = DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    store = CheckpointStore(store_dir)
    result = fit(model, opt, loader, lambda m: metrics(m, val, "val"), store=store, run="elec-mlp",
                 max_epochs=args.max_epochs, monitor="val_loss", patience=4, min_delta=1e-4, min_epochs=3,
                 loss_fn=nn.functional.binary_cross_entropy_with_logits, split=split,
                 retention=dict(keep_last=3, keep_best=2))

    es = result.early_stopping
    print(f"\nstopped: {result.stop_reason} after {result.epochs} epochs "
          f"(no improvement of val_loss by more than {es.min_delta} for {es.patience} epochs)")
    print(f"best (from the store's index): epoch {result.best.epoch}, val_loss "
          f"{result.best.metrics['val_loss']:.4f}, val_acc {result.best.metrics['val_acc']:.3f}")
    model.eval()
    with torch.no_grad():
        t = metrics(model, test, "test")
    print(f"restored best model on the held-out test split: test_acc {t['test_acc']:.3f}, "
          f"test_loss {t['test_loss']:.4f}")
    kept = store.list(run="elec-mlp", sort="val_loss")
    print(f"\ncheckpoints kept by retention (last 3 + best 2), best first:")
    for info in kept:
        print(f"  epoch {info.epoch:>2}  val_loss {info.metrics['val_loss']:.4f}  {info.short_id}")
    assert result.best.id == kept[0].id
    print(f"\nstore at {store_dir}; try: {ckpt_command()} --store {store_dir} ls --sort val_loss")


if __name__ == "__main__":
    sys.exit(main())
