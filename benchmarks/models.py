"""Real models for the benchmark, built from their configs (no download): GPT-2 small and a ResNet-50,
each with AdamW state after one optimizer step, so the state has the shapes and the scalar ``step``
tensors a real training checkpoint has.

The gradients of that one step are random, not from a forward/backward pass: a GPT-2 backward pass on
this 2-core machine takes ~9 s and changes nothing about what is saved (shapes, dtypes, counts).
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (v1.5: stride on the 3x3 conv), rebuilt without torchvision."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            seq = []
            for b in range(blocks):
                seq.append(Bottleneck(inplanes, planes, stride=2 if (b == 0 and i > 0) else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*seq))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(quick: bool) -> nn.Module:
    """ResNet-50 (25.6 M parameters, widths 64..2048); --quick: the same layout, 1/8 of the width."""
    return ResNet(width=8 if quick else 64, classes=100 if quick else 1000)


def gpt2(quick: bool) -> nn.Module:
    """GPT-2 small (124 M parameters, tied embeddings) from its default config; --quick: 2 tiny layers."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config() if not quick else GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000,
                                                    n_positions=128)
    return GPT2LMHeadModel(cfg)


MODELS = {"gpt2": gpt2, "resnet50": resnet50}


def trained(name: str, quick: bool, device: str = "cpu") -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model on ``device`` and an AdamW optimizer after one step (its state is populated)."""
    torch.manual_seed(0)
    model = MODELS[name](quick).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def state_of(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """What a trainer saves. The tensors alias the live parameters and optimizer state."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}


# -- the benchmark operations (run in a worker) ---------------------------------------------------------------
def run(name: str, system: str, d: str, t, quick: bool, device: str = "cpu") -> None:  # type: ignore[no-untyped-def]
    """torch: copy floor, torch.save+fsync, torch.load + load_state_dict (model and optimizer), cold/hot.
    ckpt: durable save, async save blocking (twice: the first sizes the staging buffers), load_into
    (model and optimizer), cold/hot."""
    import os

    from benchmarks.cases import mutate, nbytes, tensors
    from benchmarks.measure import drop_cache, fsync_path
    model, opt = trained(name, quick, device)
    state = state_of(model, opt)
    ts = tensors(state)
    t.out["bytes"] = float(nbytes(state))
    t.out["tensors"] = float(len(ts))
    t.info["scalar_tensors"] = sum(1 for x in ts if x.dim() == 0)
    if system == "torch":
        pin = device.startswith("cuda")
        bufs = [torch.zeros(x.shape, dtype=x.dtype, pin_memory=pin) for x in ts]  # touched: a trainer's reused buffers
        t("copy", lambda: [b.copy_(x, non_blocking=pin) for b, x in zip(bufs, ts)])
        del bufs
        path = os.path.join(d, "state.pt")
        t("save", lambda: (torch.save(state, path), fsync_path(path)))

        def load() -> None:
            sd = torch.load(path, weights_only=True, map_location=device)
            model.load_state_dict(sd["model"])
            opt.load_state_dict(sd["optimizer"])
    else:
        from ckpt import CheckpointStore
        store_dir = os.path.join(d, "store")
        store = CheckpointStore(store_dir, compression="none")
        t("save", lambda: store.save("model", 0, state))
        for epoch in (1, 2):
            mutate(state)
            pending = t("async_block", lambda: store.save("model", epoch, state, blocking=False))
            t("async_total", pending.result)
        path = store_dir

        def load() -> None:
            store.load_into(model, "latest", key="model")
            store.load_into(opt, "latest", key="optimizer")
    drop_cache(path)
    t("load_into_cold", load)
    t("load_into_hot", load)
