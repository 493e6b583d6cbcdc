"""Transfer learning: load a checkpoint's weights into a model that is not quite the same.

    report = load_pretrained(model, store, "pretrain:best")   # new head: its keys are reported missing
    print(report)
    freeze(model.backbone)
    opt = torch.optim.AdamW(trainable_parameters(model))

Keys are compared after removing wrapper prefixes (``module.`` from DataParallel/DDP, ``_orig_mod.``
from torch.compile) on both sides, so a checkpoint of a wrapped model loads into a bare one and back.
Tensors whose shape differs (a classifier with another number of classes) are left as initialized and
reported. If nothing at all matches, that is an error: a model silently running on random weights is
the failure this module exists to prevent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ckpt.errors import InvalidArgumentError, KeyMismatchError
from ckpt.records import CheckpointInfo

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def canonical_key(key: str, prefixes: Iterable[str] = WRAPPER_PREFIXES) -> str:
    """``key`` without leading wrapper prefixes (``module._orig_mod.fc.weight`` -> ``fc.weight``) and
    without nested ``_orig_mod.`` (``backbone._orig_mod.0.weight``, from compiling a submodule)."""
    prefixes = tuple(prefixes)
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    if "_orig_mod." in prefixes:  # nobody names a submodule _orig_mod; "module" is a common name
        key = key.replace("._orig_mod.", ".")
    return key


def remap_keys(state: Mapping[str, Any], prefixes: Iterable[str] = WRAPPER_PREFIXES,
               rename: Mapping[str, str] | Callable[[str], str] | None = None) -> dict[str, Any]:
    """A copy of ``state`` with canonical keys; ``rename`` maps old prefixes to new ones (a dict, e.g.
    ``{"features.": "backbone."}``) or is a function of the key."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for k, v in state.items():
        new = _rename(canonical_key(k, prefixes), rename)
        if new in out:
            raise InvalidArgumentError(f"keys {origin[new]!r} and {k!r} both become {new!r} after remapping")
        out[new], origin[new] = v, k
    return out


def _rename(key: str, rename: Mapping[str, str] | Callable[[str], str] | None) -> str:
    if rename is None:
        return key
    if callable(rename):
        return rename(key)
    for old, new in rename.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


@dataclass
class TransferReport:
    """What :func:`load_pretrained` did. Keys are the target model's (missing) or the checkpoint's."""

    checkpoint: CheckpointInfo
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected_keys: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        return len(self.loaded_keys)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensor(s) from {self.checkpoint.short_id} "
                 f"({self.checkpoint.run}@{self.checkpoint.epoch})"]
        if self.missing_keys:
            lines.append(f"  missing (left as initialized): {', '.join(self.missing_keys)}")
        if self.unexpected_keys:
            lines.append(f"  unexpected (not loaded): {', '.join(self.unexpected_keys)}")
        for k, a, b in self.mismatched_keys:
            lines.append(f"  shape differs, left as initialized: {k} checkpoint {list(a)} vs model {list(b)}")
        return "\n".join(lines)


def load_pretrained(model: torch.nn.Module, store: Any, selector: Any = "latest", *, key: Any = "model",
                    strict: bool = False, prefixes: Iterable[str] = WRAPPER_PREFIXES,
                    rename: Mapping[str, str] | Callable[[str], str] | None = None) -> TransferReport:
    """Load the tensors of checkpoint ``selector`` (sub-tree ``key``) that fit ``model``.

    ``strict=True`` raises KeyMismatchError unless every key matches with its shape. Whatever
    ``strict``, nothing matching raises KeyMismatchError. The report's ``checkpoint`` is a good
    ``parent=`` for the fine-tuning run's lineage.
    """
    prefixes = tuple(prefixes)
    info = store.get(selector)
    source = store.load(info.id, key=key)
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise InvalidArgumentError(f"checkpoint {info.short_id} sub-tree {key!r} is not a state dict of tensors; "
                                   f"pass key= to pick the model's (e.g. key='model')")
    src = remap_keys(source, prefixes, rename)
    target = model.state_dict()
    by_canon = {canonical_key(k, prefixes): k for k in target}
    report = TransferReport(info)
    to_load: dict[str, torch.Tensor] = {}
    for canon, tkey in by_canon.items():
        if canon not in src:
            report.missing_keys.append(tkey)
        elif tuple(src[canon].shape) != tuple(target[tkey].shape):
            report.mismatched_keys.append((tkey, tuple(src[canon].shape), tuple(target[tkey].shape)))
        else:
            to_load[tkey] = src[canon]
            report.loaded_keys.append(tkey)
    report.unexpected_keys = [k for k in src if k not in by_canon]
    if not to_load:
        raise KeyMismatchError(
            f"no tensor of checkpoint {info.short_id} ({info.run}@{info.epoch}) fits the model: checkpoint keys "
            f"{list(src)[:8]}, model keys {list(target)[:8]}; check key= and rename= (prefixes "
            f"{list(prefixes)} are already removed)", report.missing_keys, report.unexpected_keys,
            [k for k, _, _ in report.mismatched_keys])
    if strict and (report.missing_keys or report.unexpected_keys or report.mismatched_keys):
        raise KeyMismatchError(f"load_pretrained(strict=True): {report}", report.missing_keys,
                               report.unexpected_keys, [k for k, _, _ in report.mismatched_keys])
    model.load_state_dict(to_load, strict=False)
    return report


def freeze(*modules: torch.nn.Module) -> int:
    """Stop gradients for every parameter of ``modules``; returns how many parameters were frozen."""
    n = 0
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
            n += 1
    return n


def unfreeze(*modules: torch.nn.Module) -> int:
    n = 0
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
            n += 1
    return n


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters still trained: give only these to the optimizer, so its state stays small too."""
    return [p for p in model.parameters() if p.requires_grad]
