"""The state dicts the benchmark measures. Sizes shrink with --quick (smoke test only)."""

from __future__ import annotations

import torch

MiB = 1 << 20


def _weights(n: int, nbytes: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    numel = nbytes // torch.tensor([], dtype=dtype).element_size()
    return {f"layer{i}.weight": (torch.randn(numel, generator=g) * 0.02).to(dtype) for i in range(n)}


def fp32(quick: bool) -> dict:
    """1 GiB of fp32 weights: 100 tensors of 10 MiB."""
    return _weights(100, (64 << 10) if quick else 10 * MiB, torch.float32)


def bf16(quick: bool) -> dict:
    """The same bytes in bf16: 100 tensors of 10 MiB."""
    return _weights(100, (64 << 10) if quick else 10 * MiB, torch.bfloat16)


def small(quick: bool) -> dict:
    """10,000 small tensors (1 KiB each), e.g. biases and norms of a deep model."""
    g = torch.Generator().manual_seed(0)
    return {f"block{i // 4}.p{i % 4}": torch.randn(256, generator=g) for i in range(1000 if quick else 10_000)}


def adam(quick: bool) -> dict:
    """A model plus Adam state (exp_avg, exp_avg_sq, step), about 1 GiB in all."""
    model = _weights(40, (32 << 10) if quick else 8 * MiB + 512 * 1024, torch.float32)
    state = {i: {"step": torch.tensor(100.0), "exp_avg": t * 0.1, "exp_avg_sq": t * t}
             for i, t in enumerate(model.values())}
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
               "params": list(range(len(model)))}]
    return {"model": model, "optimizer": {"state": state, "param_groups": groups}, "epoch": 3}


def lora(quick: bool) -> dict:
    """A 99%-frozen model: a 1 GiB base plus adapters of 1% of its size that change every save."""
    base = _weights(100, (64 << 10) if quick else 10 * MiB, torch.float32)
    adapters = _weights(10, (6 << 10) if quick else 1 * MiB, torch.float32, seed=1)
    return {"base": base, "lora": adapters}


def tiny(quick: bool) -> dict:
    """A tiny state: 10 tensors, about 1 MB in all (the fixed cost of a save dominates)."""
    g = torch.Generator().manual_seed(0)
    return {f"p{i}": torch.randn(25_000, generator=g) for i in range(10)}


def many(n: int) -> dict:
    """``n`` tensors of 4 KiB: the history cases change one of them per save."""
    g = torch.Generator().manual_seed(0)
    return {f"block{i // 8}.p{i % 8}": torch.randn(1024, generator=g) for i in range(n)}


def s3(quick: bool) -> dict:
    """256 MiB of fp32 for the object-store case: 32 tensors of 8 MiB."""
    return _weights(32, (256 << 10) if quick else 8 * MiB, torch.float32)


CASES = {"fp32": fp32, "bf16": bf16, "small": small, "adam": adam, "lora": lora, "tiny": tiny, "s3": s3}


def tensors(state: dict) -> list[torch.Tensor]:
    out = []
    for v in state.values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            out.extend(tensors(v))
    return out


def nbytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(state))


def mutate(state: dict, part: str | None = None) -> None:
    """What an optimizer step does: every (or one part's) tensor changes in place."""
    target = state[part] if part else state
    for t in tensors(target):
        if t.is_floating_point():
            t.add_(1e-3)
