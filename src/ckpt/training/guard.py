"""What defines a run, recorded in its checkpoints, and the check a resume makes against it.

Re-running an edited script with ``resume="auto"`` would otherwise continue the old run silently: the
optimizer's saved ``param_groups`` overwrite the new learning rate, a changed split is replaced by the
saved one, and a changed architecture ends in torch's raw "size mismatch". So every checkpoint carries
``run_config`` (plain values: the optimizer class and hyperparameters as the script set them, the
scheduler's settings, the fit arguments that change training, the loader and split), and a resume
compares it with what the script passes now, before anything is loaded.

A value counts as unchanged when it equals either the recorded one (a fresh process running the same
script) or the one in the checkpoint itself (the same objects handed to ``fit`` again, in a notebook,
after a scheduler moved the learning rate).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ckpt.errors import InvalidArgumentError
from ckpt.training import data

KEY = "run_config"
VERSION = 1

# Scheduler state entries that move as training goes on (or mirror the optimizer): never compared.
_SCHEDULER_STATE = {"last_epoch", "base_lrs", "verbose", "best", "num_bad_epochs", "cooldown_counter",
                    "mode_worse", "eps_reached"}


@dataclass(frozen=True)
class Change:
    """One difference between the run as recorded and as the script sets it up now."""

    part: str  # "model", "optimizer", "scheduler", "fit", "data", "split"
    name: str  # e.g. "lr", "group 1 lr", "0.weight shape"
    before: Any
    after: Any
    overridable: bool = True  # False: the checkpoint cannot be loaded into this setup at all
    key: str | None = None  # the optimizer/scheduler setting, for putting the new value back after loading
    group: int | None = None  # the optimizer's parameter group
    moved: bool = False  # training itself moves this value (a scheduler's lr): an object reused in-process differs too

    def __str__(self) -> str:
        where = f"{self.part} {self.name}" if self.name else self.part
        return f"{where}: {_show(self.before)} -> {_show(self.after)}"


class RunMismatchError(InvalidArgumentError):
    """A resume found the script changed since the run's checkpoints were written; nothing was loaded."""

    def __init__(self, message: str, changes: Sequence[Change] = ()) -> None:
        super().__init__(message)
        self.changes = list(changes)


# -- describing the run -------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """Plain Python values (what the store keeps without pickling anything of the user's)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return describe_callable(value) if callable(value) else f"<{type(value).__qualname__}>"


def describe_callable(fn: Any) -> str:
    """A stable name for a loss function: module and qualified name, partial arguments, module settings
    (never a repr with a memory address)."""
    if fn is None:
        return "torch.nn.functional.cross_entropy"
    if isinstance(fn, functools.partial):
        args = [repr(plain(a)) for a in fn.args] + [f"{k}={plain(v)!r}" for k, v in fn.keywords.items()]
        return f"{describe_callable(fn.func)}({', '.join(args)})"
    if isinstance(fn, torch.nn.Module):
        settings = {k: plain(v) for k, v in sorted(vars(fn).items())
                    if not k.startswith("_") and k != "training" and (v is None or isinstance(v, (bool, int, float, str)))}
        return f"{type(fn).__module__}.{type(fn).__qualname__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str):
        return f"{getattr(fn, '__module__', None) or ''}.{name}".lstrip(".")
    return f"{type(fn).__module__}.{type(fn).__qualname__}"


def _hyper(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in group.items() if k != "params"}


def _scheduler_settings(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in state.items() if not k.startswith("_") and k not in _SCHEDULER_STATE}


def describe(trainer: Any) -> dict[str, Any]:
    """The run definition of a Trainer as its script set it up (call before anything is loaded)."""
    opt = trainer.optimizer
    es = trainer.early_stopping
    loader = trainer.train_loader
    sched = trainer.scheduler
    split = trainer.split
    try:
        dataset_size: int | None = len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        dataset_size = None
    return {
        "version": VERSION,
        "optimizer": {"class": _qualname(type(opt)), "groups": [_hyper(g) for g in opt.param_groups]},
        "scheduler": None if sched is None else {"class": _qualname(type(sched)),
                                                  "settings": _scheduler_settings(sched.state_dict())},
        "fit": {"monitor": trainer.monitor, "mode": trainer.mode,
                "patience": es.patience if es else None, "min_delta": es.min_delta if es else None,
                "min_epochs": es.min_epochs if es else None, "loss_fn": describe_callable(trainer.loss_fn),
                "scheduler_interval": trainer.scheduler_interval, "grad_scaler": trainer.grad_scaler is not None,
                "autocast": bool(trainer.autocast), "max_grad_norm": trainer.max_grad_norm},
        "data": {"batch_size": plain(getattr(loader, "batch_size", None)),
                 "drop_last": plain(getattr(loader, "drop_last", None)),
                 "sampler": _qualname(type(loader.sampler)) if getattr(loader, "sampler", None) is not None else None,
                 "dataset_size": dataset_size, "batches_per_epoch": data.num_batches(loader)},
        "split": None if split is None else {
            "seed": getattr(split, "seed", None) if getattr(split, "seed_given", True) else None,
            "sizes": [len(s) for s in getattr(split, "subsets", [])]},
        "info": {"max_epochs": trainer.max_epochs},  # recorded, not compared: raising it continues a run
        "changes": [],
    }


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- comparing ---------------------------------------------------------------------------------------
def compare(state: Mapping[str, Any], now: Mapping[str, Any], model: torch.nn.Module) -> list[Change]:
    """What differs between a checkpoint (its ``run_config`` and saved state) and the run set up now."""
    changes = _model_changes(state.get("model"), model)
    recorded = state.get(KEY) if isinstance(state.get(KEY), Mapping) else None
    if recorded is None:  # written before run_config existed: only what the checkpoint itself shows for sure
        saved = state.get("optimizer")
        groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
        if isinstance(groups, list) and len(groups) != len(now["optimizer"]["groups"]):
            changes.append(Change("optimizer", "parameter groups", len(groups), len(now["optimizer"]["groups"])))
        return changes
    changes += _optimizer_changes(recorded, state.get("optimizer"), now["optimizer"])
    changes += _scheduler_changes(recorded, state.get("scheduler"), now["scheduler"])
    if recorded is not None:
        for part in ("fit", "data"):
            before, after = recorded.get(part) or {}, now[part]
            for k, v in after.items():
                if k in before and not _same(before[k], v):
                    changes.append(Change(part, k, before[k], v, key=k))
        changes += _split_changes(recorded.get("split"), now["split"])
    return changes


def _model_changes(saved: Any, model: torch.nn.Module) -> list[Change]:
    if not isinstance(saved, Mapping):
        return []
    have = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    was = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)}
    out: list[Change] = []
    for k in was:
        if k not in have:
            out.append(Change("model", f"{k}", f"{_shape(was[k])}", "absent", overridable=False))
    for k, t in have.items():
        if k not in was:
            out.append(Change("model", f"{k}", "absent", f"{_shape(t)}", overridable=False))
        elif tuple(was[k].shape) != tuple(t.shape):
            out.append(Change("model", f"{k} shape", _shape(was[k]), _shape(t), overridable=False))
        elif was[k].dtype != t.dtype:
            out.append(Change("model", f"{k} dtype", str(was[k].dtype).replace("torch.", ""),
                              str(t.dtype).replace("torch.", "")))
    return out


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _optimizer_changes(recorded: Mapping[str, Any] | None, saved: Any, now: Mapping[str, Any]) -> list[Change]:
    rec = (recorded or {}).get("optimizer") or {}
    if rec.get("class") and rec["class"] != now["class"]:
        return [Change("optimizer", "class", _short(rec["class"]), _short(now["class"]))]
    saved_groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(saved_groups, list):
        return []
    if len(saved_groups) != len(now["groups"]):
        return [Change("optimizer", "parameter groups", len(saved_groups), len(now["groups"]))]
    rec_groups = rec.get("groups") if isinstance(rec.get("groups"), list) and len(rec["groups"]) == len(saved_groups) else None
    out: list[Change] = []
    for i, group in enumerate(now["groups"]):
        label = "" if len(saved_groups) == 1 else f"group {i} "
        current = _hyper(saved_groups[i])
        first = rec_groups[i] if rec_groups is not None else {}
        for k, v in group.items():
            if k in first or k in current:
                if any(k in src and _same(src[k], v) for src in (first, current)):
                    continue
                moved = k in first and k in current and not _same(first[k], current[k])
                out.append(Change("optimizer", f"{label}{k}", first.get(k, current.get(k)), v, key=k, group=i,
                                  moved=moved))
    return out


def _scheduler_changes(recorded: Mapping[str, Any] | None, saved: Any, now: Mapping[str, Any] | None) -> list[Change]:
    rec = (recorded or {}).get("scheduler") if recorded is not None else None
    if (saved is None) != (now is None):
        return [Change("scheduler", "", _short(rec["class"]) if rec else ("none" if saved is None else "a scheduler"),
                       _short(now["class"]) if now else "none")]
    if now is None or not isinstance(saved, Mapping):
        return []
    if rec and rec.get("class") != now["class"]:
        return [Change("scheduler", "class", _short(rec["class"]), _short(now["class"]))]
    first = (rec or {}).get("settings") or {}
    current = _scheduler_settings(saved)
    out: list[Change] = []
    for k, v in now["settings"].items():
        if k in first or k in current:
            if any(k in src and _same(src[k], v) for src in (first, current)):
                continue
            moved = k in first and k in current and not _same(first[k], current[k])
            out.append(Change("scheduler", k, first.get(k, current.get(k)), v, key=k, moved=moved))
    return out


def _split_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[Change]:
    if before is None or after is None:
        return []
    out = []
    if before.get("sizes") != after["sizes"]:
        out.append(Change("split", "sizes", before.get("sizes"), after["sizes"], overridable=False))
    if before.get("seed") is not None and after["seed"] is not None and before["seed"] != after["seed"]:
        out.append(Change("split", "seed", before["seed"], after["seed"], overridable=False))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def merge(recorded: Mapping[str, Any] | None, now: dict[str, Any], changes: Sequence[Change]) -> dict[str, Any]:
    """The run definition to save from now on: the recorded one with the accepted changes applied.

    Not simply ``now``: objects handed to fit again in the same process hold values training moved (the
    scheduled learning rate), and those must not become the run's definition."""
    if not isinstance(recorded, Mapping) or recorded.get("version") != VERSION:
        return now
    out = copy.deepcopy(dict(recorded))
    out["info"] = now["info"]
    for part in ("fit", "data"):
        out[part] = {**now[part], **(out.get(part) or {})}  # settings newer versions added are taken as they are
    for c in changes:
        if c.part in ("optimizer", "scheduler") and c.key is None:
            out[c.part] = now[c.part]  # another class or structure: the new one wholesale
        elif c.part == "optimizer" and c.key is not None and c.group is not None:
            groups = (out.get("optimizer") or {}).get("groups")
            if isinstance(groups, list) and c.group < len(groups):
                groups[c.group][c.key] = c.after
            else:
                out["optimizer"] = now["optimizer"]
        elif c.part == "scheduler" and c.key is not None:
            out["scheduler"]["settings"][c.key] = c.after
        elif c.part in ("fit", "data") and c.key is not None:
            out[c.part][c.key] = c.after
    return out


# -- saying it -----------------------------------------------------------------------------------------
def mismatch_message(run: str, checkpoint: Any, changes: Sequence[Change], *, allow_changes: bool) -> str:
    fixed = [c for c in changes if not c.overridable]
    shown = [f"  {c}" for c in changes[:12]] + ([f"  ... and {len(changes) - 12} more"] if len(changes) > 12 else [])
    head = (f"run {run!r} was set up differently when checkpoint {checkpoint.short_id} (epoch {checkpoint.epoch}, "
            f"step {checkpoint.step}) was saved; nothing was loaded and nothing trained:\n" + "\n".join(shown))
    new_run = f"fit(..., run={run + '-2'!r}) to start a new run with these settings"
    if fixed:
        why = ("the model's parameters" if any(c.part == "model" for c in fixed) else "the data split")
        return (f"{head}\nThe checkpoint cannot be loaded into this setup ({why} changed). Ways forward: "
                f"undo the change to continue run {run!r}; or {new_run}"
                + (" (to start from this run's weights, load what fits first with "
                   f"ckpt.training.load_pretrained(model, store, '{run}:latest') and pass parent=report.checkpoint)"
                   if any(c.part == "model" for c in fixed) else "")
                + ("" if not allow_changes else "; allow_changes=True cannot override this"))
    if any(c.moved for c in changes):
        head += ("\n(If you passed an optimizer or scheduler that already trained in this process, e.g. again in a "
                 "notebook after an error, create it anew: its values moved on since the checkpoint.)")
    return (f"{head}\nWays forward: undo the change to continue run {run!r} as it was; or {new_run}; or pass "
            f"allow_changes=True to continue run {run!r} with the new settings (the change is recorded in the "
            f"run_config of its next checkpoints, and the lineage links them to {checkpoint.short_id})")
