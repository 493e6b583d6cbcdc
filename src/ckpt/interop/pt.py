"""``.pt`` files: written with torch.save so that torch.load(weights_only=True) reads them; read with
torch.load(weights_only=True) only, so a pickle payload is refused and never run."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ckpt.errors import InvalidArgumentError, InvalidFileError, UnsafeMetadataError
from ckpt.interop.files import (Imported, Written, all_leaves, count_tensors, file_tensor, flat_name, int_or_none,
                                output_file, tensor_leaves)


def weights_only_compatible(state: Any) -> tuple[Any, list[str]]:
    """A copy of the containers of ``state`` that ``torch.load(weights_only=True)`` can read back."""
    counts: dict[str, int] = {}
    arrays: dict[int, torch.Tensor] = {}

    def note(what: str) -> None:
        counts[what] = counts.get(what, 0) + 1

    def conv(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj
        if type(obj) is np.ndarray:
            if id(obj) not in arrays:
                note("numpy array(s) written as tensors")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    arrays[id(obj)] = torch.from_numpy(obj)
            return arrays[id(obj)]
        if isinstance(obj, np.generic):
            note("numpy scalar(s) written as Python numbers")
            return obj.item()
        if isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for k, v in obj.items():
                out[conv(k)] = conv(v)
            if isinstance(obj, OrderedDict) and vars(obj):
                out.__dict__.update(conv(dict(vars(obj))))
            return out
        if isinstance(obj, list):
            return [conv(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(conv(v) for v in obj)
        if isinstance(obj, frozenset):
            note("frozenset(s) written as sets")
            return {conv(v) for v in obj}
        if isinstance(obj, set):
            return {conv(v) for v in obj}
        if isinstance(obj, slice):
            note("slice(s) written as (start, stop, step) tuples")
            return (obj.start, obj.stop, obj.step)
        return obj

    out = conv(state)
    return out, [f"{n} {what}" for what, n in counts.items()]


class _CountingWriter:
    def __init__(self, f: Any, advance: Callable[[int], None]) -> None:
        self.f, self.advance = f, advance

    def write(self, data: Any) -> int:
        n = self.f.write(data)
        self.advance(len(memoryview(data)))
        return n

    def flush(self) -> None:
        self.f.flush()


def write_pt(state: Any, path: str, *, overwrite: bool = False,
             advance: Callable[[int], None] | None = None) -> Written:
    plain, notes = weights_only_compatible(state)
    n, size = count_tensors(plain)
    with output_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            torch.save(plain, _CountingWriter(f, advance) if advance else f)
    return Written(os.path.abspath(path), "pt", n, size, notes)


def write_weights_pt(state: Any, path: str, *, overwrite: bool = False) -> Written:
    """Export to .pt: a flat {key path joined with ".": tensor} dict, nothing else."""
    flat: OrderedDict[str, torch.Tensor] = OrderedDict()
    leaves = 0
    for path_, t in tensor_leaves(state):
        leaves += 1
        name = flat_name(path_)
        if name in flat:
            raise InvalidArgumentError(f"two tensors would both be named {name!r} (key paths joined with '.'); "
                                       f"export a narrower --only sub-tree")
        flat[name] = file_tensor(t, name)
    dropped = sum(1 for _ in all_leaves(state)) - leaves
    with output_file(path, overwrite=overwrite) as tmp:
        torch.save(flat, tmp)
    notes = [f"{dropped} non-tensor value(s) left out (weights only)"] if dropped else []
    return Written(os.path.abspath(path), "pt", len(flat), count_tensors(flat)[1], notes)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REASON = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def read_pt(path: str) -> Imported:
    """A ``.pt/.pth/.bin/.ckpt`` file through ``torch.load(weights_only=True)``; nothing else is ever run."""
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)  # no mmap: it skips record-size checks
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL.search(text)
        if found:
            raise UnsafeMetadataError(
                f"{path} holds pickled Python objects beyond tensors and plain containers (it names "
                f"{found.group(1)}); ckpt reads .pt files with torch.load(weights_only=True) only and executed "
                f"nothing. If you trust the file, load it in your own code and save its state with "
                f"CheckpointStore.save()", found.group(1)) from None
        reason = _REASON.search(text)
        raise UnsafeMetadataError(
            f"{path} cannot be read by torch.load(weights_only=True)"
            f"{f' ({reason.group(1).strip()})' if reason else ''}: it is not a PyTorch file, or it holds pickle "
            f"data beyond tensors and plain containers; ckpt executed nothing") from None
    except PermissionError:
        raise  # the file is fine; the user may not read it (exit code 5)
    except RuntimeError as exc:
        if "TorchScript" in str(exc) or "torchscript" in str(exc).lower():
            raise InvalidArgumentError(f"{path} is a TorchScript archive, not a checkpoint; save the "
                                       f"module's state_dict() instead") from None
        raise InvalidFileError(f"{path} is not a readable PyTorch file ({' '.join(str(exc).split())[:200]})") from None
    except (EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile, IndexError, TypeError, AttributeError,
            OverflowError) as exc:
        why = " ".join(str(exc).split())[:200] or "the file is empty or cut short"
        raise InvalidFileError(f"{path} is not a readable PyTorch file ({type(exc).__name__}: {why})") from None
    if isinstance(state, Mapping) and "state_dict" in state and (
            "pytorch-lightning_version" in state or "global_step" in state or "optimizer_states" in state):
        return Imported(state, "lightning", epoch=int_or_none(state.get("epoch")),
                        step=int_or_none(state.get("global_step")), metrics=_lightning_metrics(state))
    out = Imported(state, "pt")
    if isinstance(state, Mapping):
        out.epoch = int_or_none(state.get("epoch"))
        out.step = int_or_none(state.get("step", state.get("global_step")))
        out.metrics = scalar_metrics(state)
    return out


#: Top-level numbers of a tutorial checkpoint that are settings, not results.
NOT_METRICS = frozenset({"epoch", "epochs", "step", "global_step", "iteration", "iter", "seed", "lr",
                         "learning_rate", "momentum", "weight_decay", "wd", "dropout", "batch_size", "num_classes",
                         "version", "temperature", "eps", "warmup", "warmup_steps", "max_epochs"})


def scalar_metrics(state: Mapping) -> dict[str, float]:
    """The results a tutorial's ``torch.save({"epoch": e, "model_state_dict": ..., "loss": loss}, PATH)``
    holds: top-level float scalars (Python floats or one-element float tensors, e.g. a ``loss`` saved
    without ``.item()``), and integers whose name tells a direction (``correct`` no, ``top1_acc`` yes)."""
    from ckpt.metrics import infer_mode
    out: dict[str, float] = {}
    for name, v in state.items():
        if not isinstance(name, str) or name.lower() in NOT_METRICS or name.startswith("_"):
            continue
        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or not (v.is_floating_point() or infer_mode(name)) or v.is_complex():
                continue
            v = v.detach().reshape(()).item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int) and infer_mode(name) is None:
            continue
        try:
            value = float(v)
        except OverflowError:  # an integer beyond any float: not a metric
            continue
        if value == value and abs(value) != float("inf"):
            out[name] = value
    return out


def _lightning_metrics(state: Mapping) -> dict[str, Any]:
    """The monitored score of a Lightning ModelCheckpoint callback (``current_score``), when there is one."""
    callbacks = state.get("callbacks")
    if not isinstance(callbacks, Mapping):
        return {}
    for name, cb in callbacks.items():
        if not (isinstance(name, str) and name.startswith("ModelCheckpoint") and isinstance(cb, Mapping)):
            continue
        monitor, score = cb.get("monitor"), cb.get("current_score")
        if isinstance(score, torch.Tensor) and score.numel() == 1:
            score = score.item()
        if isinstance(monitor, str) and monitor and isinstance(score, (int, float)) and not isinstance(score, bool):
            return {monitor: score}  # store.save checks it (a float too large is an InvalidArgumentError)
    return {}
