"""Fine-tune a pretrained backbone under a new head, frozen, and see what each checkpoint costs.

The store addresses tensors by content: the frozen backbone has the same bytes in every fine-tune
checkpoint as in the pretrained one, so it is stored once. Each fine-tune checkpoint adds only the new
head, the optimizer state of the head (the optimizer sees only trainable parameters) and a few small
RNG/data-order states.

    python examples/finetune_frozen.py [--store DIR]

The store goes into a new folder: DIR/store (DIR/store-2 on the next run...) when DIR is new, empty or was
made by an example, else a new folder under the system temp directory; a DIR holding anything else is
refused and left untouched (see examples/_folders.py).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt import CheckpointStore
from ckpt.training import fit, freeze, load_pretrained, seed_everything, trainable_parameters

from _folders import line_buffered_stdout, new_folder


class Net(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(32, 512), nn.GELU(), nn.LayerNorm(512),
                                      nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 256), nn.GELU())
        self.head = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def task(classes: int, n: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Gaussian clusters in 32 dimensions; the 2-class task merges the 6 pretraining clusters in pairs,
    so features learned for the first task are what the second one needs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, 32, generator=torch.Generator().manual_seed(123)) * 0.3
    k = torch.randint(0, 6, (n,), generator=g)
    x = centers[k] + torch.randn(n, 32, generator=g)
    y = k if classes == 6 else k % 2
    cut = int(n * 0.8)
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def accuracy(model: nn.Module, ds: TensorDataset) -> dict[str, float]:
    x, y = ds.tensors
    out = model(x)
    return {"val_loss": nn.functional.cross_entropy(out, y).item(), "val_acc": (out.argmax(1) == y).float().mean().item()}


def kb(n: int) -> str:
    return f"{n / 1024:8.1f} KiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", metavar="DIR", help="a new or empty folder, or one an example made (default: a new "
                                                   "folder under the temp directory)")
    args = ap.parse_args()
    line_buffered_stdout()
    store_dir = new_folder(args.store, "finetune_frozen")
    print(f"store: {store_dir} (a new folder)\n")
    torch.set_num_threads(1)
    seed_everything(0)
    store = CheckpointStore(store_dir)

    print("1. pretraining a 6-class model")
    train, val = task(6, 3000, seed=1)
    model = Net(6)
    fit(model, torch.optim.Adam(model.parameters(), lr=1e-3),
        DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)),
        lambda m: accuracy(m, val), store=store, run="pretrain", max_epochs=3, monitor="val_acc", verbose=False)
    best = store.best("val_acc", run="pretrain")
    print(f"   best: epoch {best.epoch}, val_acc {best.metrics['val_acc']:.3f}, checkpoint "
          f"{kb(best.logical_size)} (weights + Adam state + RNG)")

    print("\n2. a 2-class model: same backbone, new head; loading what fits")
    ft = Net(2)
    report = load_pretrained(ft, store, "pretrain:best:val_acc")
    print("   " + str(report).replace("\n", "\n   "))
    frozen = freeze(ft.backbone)
    params = trainable_parameters(ft)
    print(f"   froze {frozen} backbone tensors; training {len(params)} tensors "
          f"({sum(p.numel() for p in params)} of {sum(p.numel() for p in ft.parameters())} parameters)")

    print("\n3. fine-tuning the head (the run's first checkpoint records the pretrained one as parent)")
    train2, val2 = task(2, 2000, seed=2)
    sizes = []

    class Sizes:
        def on_save(self, trainer, info):  # type: ignore[no-untyped-def]
            sizes.append(info)

    backbone_before = {k: v.clone() for k, v in ft.backbone.state_dict().items()}
    result = fit(ft, torch.optim.Adam(params, lr=1e-2),
                 DataLoader(train2, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)),
                 lambda m: accuracy(m, val2), store=store, run="finetune", max_epochs=4, monitor="val_acc",
                 parent=report.checkpoint, callbacks=[Sizes()], verbose=False)
    assert all(torch.equal(v, ft.backbone.state_dict()[k]) for k, v in backbone_before.items())
    print(f"   {result.stop_reason} after {result.epochs} epochs; best val_acc "
          f"{result.best.metrics['val_acc']:.3f} (epoch {result.best.epoch})")
    print("\n   epoch   state size    written   share")
    for info in sizes:
        print(f"   {info.epoch:>5} {kb(info.logical_size)} {kb(info.new_bytes)}   {info.new_bytes / info.logical_size:5.1%}")
    first = sizes[0]
    print(f"\n   parent of the first fine-tune checkpoint: {first.parent[:12]} (pretrain@{best.epoch})")
    total = sum(i.new_bytes for i in sizes)
    print(f"   {len(sizes)} fine-tune checkpoints of {kb(first.logical_size).strip()} each added "
          f"{kb(total).strip()} in all: the backbone is stored once, shared with the pretrained checkpoint")


if __name__ == "__main__":
    main()
