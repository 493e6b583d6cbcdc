"""PyTorch Lightning: a ``CheckpointIO`` plugin that keeps Trainer checkpoints in a ckpt store.

    from ckpt.integrations.lightning import CkptCheckpointIO

    io = CkptCheckpointIO("s3://bucket/ckpts", run="resnet-a", index="postgresql+psycopg://db/ckpt")
    trainer = Trainer(plugins=[io], callbacks=[ModelCheckpoint(dirpath="ckpts/", monitor="val_loss"),
                                               io.metrics_callback()])
    trainer.fit(model)
    trainer.fit(model, ckpt_path="ckpt:latest")          # resume through any ckpt selector
    trainer.fit(model, ckpt_path="ckpt:best:val_loss")

Every checkpoint Lightning saves becomes a store checkpoint ``run@epoch`` with ``step = global_step``
(deduplicated: frozen weights are stored once). At the path Lightning asked for, the plugin writes a
small JSON *pointer* instead of the full file, so ModelCheckpoint's bookkeeping works unchanged:
``save_top_k`` eviction, ``last.ckpt``, ``ckpt_path="last"`` and ``"best"``, and plain paths all
resolve to store checkpoints. When Lightning removes or overwrites a path, the pointer goes, and the
checkpoint too once no pointer names it (``delete_removed=False`` keeps it in the store and leaves
retention to ``ckpt prune``).

Two different states are never one checkpoint. A weights-only save (``save_weights_only=True``) is the
variant ``"weights"`` of its (epoch, step), beside the full one. The same step saved again in one fit
(ModelCheckpoint's top-k file, then ``last.ckpt``) names the checkpoint already saved when the state is
identical (same content hash), else becomes a variant named after the file (``"last"``). A new fit that
would write into a run an earlier fit of the same plugin wrote (a sweep loop reusing the plugin) raises
:class:`~ckpt.errors.DuplicateCheckpointError` before it trains, and so does any save whose (epoch, step)
another fit or process already holds: give each fit its own run (``io.run = "sweep-3"``), or resume.

With ``ModelCheckpoint(monitor=..., mode=...)`` the run's objective is declared (unless the run already
declares one), so ``best`` and ``ckpt restore best`` need nothing more.

``load_checkpoint`` accepts a pointer file, ``ckpt:SELECTOR`` (any ckpt selector, resolved within the
plugin's run for ``latest``/``best`` forms; where a weights-only checkpoint and a full one compete, the
full one, which Lightning can resume from), a bare selector, or an ordinary Lightning ``.ckpt`` file
(loaded with torch as Lightning would). ``map_location`` is passed on as torch.load takes it.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from ckpt.errors import CheckpointNotFoundError, DuplicateCheckpointError, SelectorError
from ckpt.integrations._objective import declare_objective

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("ckpt.integrations.lightning needs Lightning: pip install 'ckpt[lightning]'") from exc

__all__ = ["CkptCheckpointIO", "POINTER_FORMAT", "WEIGHTS"]

log = logging.getLogger("ckpt")
POINTER_FORMAT = "ckpt-pointer-1"
_MAX_POINTER = 64 * 1024
PREFIX = "ckpt:"
#: The variant of a weights-only save (``ModelCheckpoint(save_weights_only=True)``).
WEIGHTS = "weights"


@dataclass
class _Fit:
    """What the plugin knows about the fit in progress (a reused plugin starts a new one per fit)."""

    number: int = 1
    ids: set[str] = field(default_factory=set)  # checkpoints this fit saved or named
    runs: set[str] = field(default_factory=set)  # runs it wrote to
    last_step: int = -1
    last_full: str | None = None  # the lineage parent of the next save
    objectives: set[str] = field(default_factory=set)  # runs whose objective this fit looked at


class CkptCheckpointIO(CheckpointIO):
    """Store Lightning checkpoints in a ckpt store (see the module docstring).

    ``store`` is a :class:`~ckpt.CheckpointStore` or a location (opened lazily in each process with
    ``index`` and ``storage_options``, which is what multi-process strategies need: the plugin is
    pickled to the workers, an open store is not). ``run`` may be changed between fits
    (``io.run = "trial-2"``).
    """

    def __init__(self, store: Any, run: str, *, index: str | None = None,
                 storage_options: dict[str, Any] | None = None, delete_removed: bool = True) -> None:
        self.run = run
        self.delete_removed = delete_removed
        self._index = index
        self._storage_options = storage_options
        if isinstance(store, (str, os.PathLike)):
            self._location: str | None = os.fspath(store)
            self._store = None
        else:
            self._location = None
            self._store = store
        self._fit = _Fit()
        self._earlier_runs: set[str] = set()  # runs earlier fits of this plugin wrote to
        self._named: dict[str, set[str]] = {}  # checkpoint id -> pointer paths this plugin wrote for it
        self._resumed: tuple[str, int] | None = None  # (id, step) of the last store checkpoint loaded
        self._loads_since_save = 0
        self._monitors: list[tuple[str, str]] | None = None  # from the callback, when it is there
        self._next_metrics: dict[str, float] = {}

    @property
    def run(self) -> str:
        return self._run

    @run.setter
    def run(self, name: str) -> None:
        from ckpt import validation
        self._run = validation.run_name(name)

    # -- the store ------------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        if self._store is None:
            from ckpt import CheckpointStore
            self._store = CheckpointStore(self._location, index=self._index,  # type: ignore[arg-type]
                                          storage_options=self._storage_options)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._location is not None:
            state["_store"] = None  # reopened in the other process
        return state

    def metrics_callback(self) -> Callback:
        """A callback that records ``trainer.callback_metrics`` with every checkpoint (for ``best:...``)
        and tells the plugin when a fit starts (so a reused plugin never answers for another fit)."""
        return _MetricsCallback(self)

    # -- fits -----------------------------------------------------------------------------------
    def _begin_fit(self, *, fresh: bool, monitors: list[tuple[str, str]] | None = None) -> str | None:
        """A new fit: forget the previous one's checkpoints. A fit from scratch into a run an earlier
        fit wrote would mix two trainings in one run (and clash at the first repeated step): returns
        why it is refused (the caller raises), else None."""
        previous = self._fit
        self._earlier_runs |= previous.runs
        self._fit = _Fit(number=previous.number + 1)
        self._monitors = monitors
        if not fresh:
            return None
        self._resumed = None
        if self.run in self._earlier_runs and self._has_checkpoints(self.run):
            return (f"run {self.run!r} already holds the checkpoints of an earlier fit with this CkptCheckpointIO, "
                    f"and this fit starts from scratch: its checkpoints would be mixed with (or clash with) the "
                    f"earlier ones. Give each fit its own run: set io.run = 'NAME' before trainer.fit (or use one "
                    f"CkptCheckpointIO per fit); to continue the earlier training pass ckpt_path='ckpt:latest'; or "
                    f"remove the run first: ckpt rm {self.run}@EPOCH")
        return None

    def _has_checkpoints(self, run: str) -> bool:
        try:
            return bool(self.store.list(run, limit=1))
        except CheckpointNotFoundError:
            return False

    # -- CheckpointIO ---------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        epoch = int(checkpoint.get("epoch", 0))
        step = int(checkpoint.get("global_step", 0))
        metrics = dict(self._next_metrics) or _monitored(checkpoint)
        self._next_metrics = {}
        if step < self._fit.last_step:  # the global step went back: another fit (no metrics callback)
            refused = self._begin_fit(fresh=self._loads_since_save == 0)
            if refused:
                raise DuplicateCheckpointError(refused)
        fit, run = self._fit, self.run
        full = "optimizer_states" in checkpoint
        info = self._store_state(run, epoch, step, WEIGHTS if not full else "", _plain(checkpoint), metrics, path)
        fit.ids.add(info.id)
        fit.runs.add(run)
        fit.last_step = max(fit.last_step, step)
        if full:
            fit.last_full = info.id
        self._loads_since_save = 0
        self._declare_objective(run, checkpoint)
        old = _read_pointer(path)
        _write_pointer(path, {"format": POINTER_FORMAT, "checkpoint": info.id, "run": info.run,
                              "epoch": info.epoch, "step": info.step, "variant": info.variant,
                              "store": self.store.location})
        self._named.setdefault(info.id, set()).add(path)
        if old is not None and old["checkpoint"] != info.id and old.get("run") == run:
            self._release(old["checkpoint"], path)  # Lightning replaced the file: as if it removed it

    def _store_state(self, run: str, epoch: int, step: int, variant: str, state: Any, metrics: dict[str, float],
                     path: str) -> Any:
        """Save ``state`` as a new checkpoint, or name the identical one this fit saved at this step."""
        fit = self._fit
        parent = fit.last_full
        if parent is None and self._resumed is not None and step >= self._resumed[1]:
            parent = self._resumed[0]  # the first save after a resume descends from what was loaded
        try:
            return self._save(run, epoch, state, metrics, step, variant, parent)
        except DuplicateCheckpointError:
            pass
        same = [i for i in self.store.list(run) if i.epoch == epoch and i.step == step]
        holder = next((i for i in same if i.variant == variant), None)
        if holder is None or holder.id not in fit.ids:
            what = f"{holder.short_id}, variant {holder.variant!r}" if holder is not None and holder.variant \
                else (holder.short_id if holder is not None else "being saved")
            raise DuplicateCheckpointError(
                f"run {run!r} already has a checkpoint at epoch {epoch}, step {step} ({what}) that this fit did "
                f"not save: another fit or process trained under the same run name. Give this training its own "
                f"run (io.run = 'NAME', or CkptCheckpointIO(store, run='NAME')), resume the run with "
                f"ckpt_path='ckpt:latest', or delete the old checkpoint first: ckpt rm "
                f"{holder.id if holder is not None else run + '@' + str(epoch)}") from None
        # This fit saved this step already (top-k file then last.ckpt; a callback saving twice). The state
        # may differ (ModelCheckpoint's bookkeeping, weights changed in between): store it under a variant,
        # reusing the first one's tensors, and keep it only if its content differs.
        taken = {i.variant for i in same}
        for _ in range(16):
            name = _variant_for(variant, path, taken)
            try:
                info = self._save(run, epoch, state, metrics, step, name, holder.id)
                break
            except DuplicateCheckpointError:
                taken.add(name)
        else:  # pragma: no cover - sixteen concurrent savers of one step
            raise DuplicateCheckpointError(f"run {run!r}: no free variant for epoch {epoch}, step {step}")
        twin = next((i for i in same if i.id in fit.ids and i.content_hash == info.content_hash), None)
        if twin is None:
            return info
        self.store.delete(info.id, free=False)  # identical: nothing of it is new but its manifest
        return twin

    def _save(self, run: str, epoch: int, state: Any, metrics: dict[str, float], step: int, variant: str,
              parent: str | None) -> Any:
        try:
            return self.store.save(run, epoch, state, metrics, step=step, variant=variant, parent=parent)
        except CheckpointNotFoundError:
            if parent is None:
                raise
            # the parent was deleted meanwhile (evicted by save_top_k): the run's latest is the parent
            return self.store.save(run, epoch, state, metrics, step=step, variant=variant)

    def _declare_objective(self, run: str, checkpoint: Mapping[str, Any]) -> None:
        """Declare the run's objective from ModelCheckpoint's monitor, once per fit and run."""
        if run in self._fit.objectives:
            return
        monitors = self._monitors if self._monitors is not None else _monitors_in(checkpoint)
        if monitors is None:
            return  # a weights-only checkpoint does not say; the next full one will
        self._fit.objectives.add(run)
        distinct = sorted(set(monitors))
        if len(distinct) == 1:
            metric, mode = distinct[0]
            declare_objective(self.store, run, metric, mode, "ModelCheckpoint(monitor=...)")
        elif distinct:
            log.info("ckpt: ModelCheckpoint callbacks monitor %s; declare which one 'best' means for run %r: "
                     "ckpt objective %s METRIC --min|--max", ", ".join(f"{m} ({d})" for m, d in distinct), run,
                     run)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        self._loads_since_save += 1
        target = self.resolve(path)
        if target is None:  # an ordinary Lightning checkpoint file: load it the way Lightning does
            from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
            return TorchCheckpointIO().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        state, info = self.store.load(target, map_location=map_location, with_info=True)
        self._resumed = (info.id, int(info.step if info.step is not None else -1))
        return state

    def remove_checkpoint(self, path: Any) -> None:
        path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        pointer = _read_pointer(path)
        fs, p = fsspec.core.url_to_fs(path)
        if pointer is None:
            if fs.exists(p):  # not ours: behave like Lightning's own plugin
                fs.rm(p, recursive=True)
            return
        fs.rm(p)
        self._release(pointer["checkpoint"], path)

    def _release(self, ckpt_id: str, path: str) -> None:
        """``path`` no longer names ``ckpt_id``: delete the checkpoint unless another pointer names it."""
        names = self._named.get(ckpt_id, set())
        names.discard(path)
        if not self.delete_removed:
            return
        if any(other.get("checkpoint") == ckpt_id for other in _pointers_beside(path)):
            return  # still named by another file (e.g. last.ckpt)
        if any((_read_pointer(other) or {}).get("checkpoint") == ckpt_id for other in names):
            return  # named by a file in another directory (a second ModelCheckpoint's)
        try:
            self.store.delete(ckpt_id)
        except CheckpointNotFoundError:
            pass
        self._named.pop(ckpt_id, None)
        self._fit.ids.discard(ckpt_id)

    def teardown(self) -> None:
        if self._location is not None and self._store is not None:
            self._store.close()
            self._store = None

    # -- selectors ------------------------------------------------------------------------------
    def resolve(self, path: Any) -> str | None:
        """The checkpoint id a Lightning ``ckpt_path`` names, or None for an ordinary checkpoint file."""
        text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        if text.startswith(PREFIX):
            return self._select(text[len(PREFIX):])
        pointer = _read_pointer(text)
        if pointer is not None:
            return pointer["checkpoint"]
        fs, p = fsspec.core.url_to_fs(text)
        if fs.exists(p):
            return None
        try:
            return self._select(text)
        except SelectorError as exc:
            raise FileNotFoundError(f"{text!r} is neither a checkpoint file nor a ckpt selector ({exc}); use "
                                    f"ckpt_path='ckpt:latest', 'ckpt:best:METRIC', 'ckpt:RUN@EPOCH' or a path") from exc

    def _select(self, selector: str) -> str:
        """A selector's checkpoint, a full one rather than a weights-only one wherever both compete
        (Lightning resumes only from a full one); an id or tag naming a weights-only one is obeyed."""
        scoped = selector in ("latest", "best") or selector.startswith("best:")
        candidates = self.store.resolve(selector, run=self.run if scoped else None)
        first = candidates[0]
        if not _is_weights(first.variant) or _names_exactly(selector, first):
            return first.id
        if scoped:
            return next((c for c in candidates if not _is_weights(c.variant)), first).id
        siblings = [i for i in self.store.list(first.run)
                    if (i.epoch, i.step) == (first.epoch, first.step) and not _is_weights(i.variant)]
        return (siblings[0] if siblings else first).id


class _MetricsCallback(Callback):
    def __init__(self, io: CkptCheckpointIO) -> None:
        self.io = io

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        fresh = getattr(trainer, "ckpt_path", None) is None and trainer.global_step == 0
        monitors = []
        for cb in getattr(trainer, "checkpoint_callbacks", []):
            monitor, mode = getattr(cb, "monitor", None), getattr(cb, "mode", None)
            if isinstance(monitor, str) and monitor and mode in ("min", "max"):
                monitors.append((monitor, mode))
        refused = self.io._begin_fit(fresh=fresh and trainer.is_global_zero, monitors=monitors)
        # Only the process that saves knows what earlier fits wrote: every process stops, or none does.
        refused = trainer.strategy.broadcast(refused, src=0)
        if refused:
            raise DuplicateCheckpointError(refused)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        metrics = {}
        for name, value in trainer.callback_metrics.items():
            try:
                v = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError, RuntimeError):
                continue
            if isinstance(name, str) and 0 < len(name) <= 256:
                metrics[name] = v
        self.io._next_metrics = metrics


def _is_weights(variant: str) -> bool:
    return variant == WEIGHTS or variant.startswith(WEIGHTS + ".")


def _names_exactly(selector: str, info: Any) -> bool:
    """Whether the selector is the checkpoint's id (prefix) or one of its tags, not a latest/epoch form."""
    s = selector.strip()
    return s in info.tags or (len(s) >= 6 and info.id.startswith(s.lower()))


def _variant_for(base: str, path: str, taken: set[str]) -> str:
    """A free variant name for a second state at one step: the file's name ("last", "weights.last")."""
    stem = os.path.basename(path.rstrip("/"))
    stem = stem[:-5] if stem.endswith(".ckpt") else stem
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:40] or "copy"
    name = f"{base}.{stem}" if base else stem
    if not base and _is_weights(name):  # a full state saved as "weights.ckpt" is not weights-only
        name = f"full.{name}"[:64]
    if name in taken:
        n = 2
        while f"{name}-{n}" in taken:
            n += 1
        name = f"{name}-{n}"
    return name


def _monitors_in(checkpoint: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """ModelCheckpoint's (monitor, mode) pairs, from the callback states of a full checkpoint (the mode
    is part of ModelCheckpoint's state key); None for a checkpoint without callback states."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, Mapping):
        return None
    out = []
    for key, state in callbacks.items():
        if not (isinstance(key, str) and isinstance(state, Mapping) and isinstance(state.get("monitor"), str)):
            continue
        mode = None
        brace = key.find("{")
        if brace >= 0:
            try:
                fields = ast.literal_eval(key[brace:])
                mode = fields.get("mode") if isinstance(fields, dict) else None
            except (ValueError, SyntaxError):
                mode = None
        if mode in ("min", "max") and state["monitor"]:
            out.append((state["monitor"], mode))
    return out


def _monitored(checkpoint: dict[str, Any]) -> dict[str, float]:
    """ModelCheckpoint's monitored value at this save, from the callback states in the checkpoint."""
    out: dict[str, float] = {}
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and isinstance(state.get("monitor"), str) and state.get("current_score") is not None:
            score = state["current_score"]
            try:
                out[state["monitor"]] = float(score.item() if hasattr(score, "item") else score)
            except (TypeError, ValueError):
                pass
    return out


def _plain(obj: Any) -> Any:
    """Lightning's checkpoint with its dict subclasses (AttributeDict hparams...) as plain dicts."""
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, _plain(v)) for k, v in obj.items())
        if getattr(obj, "_metadata", None) is not None:
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields") and type(obj) is tuple:
        return tuple(_plain(v) for v in obj)
    return obj


def _write_pointer(path: str, doc: dict[str, Any]) -> None:
    fs, p = fsspec.core.url_to_fs(path)
    parent = p.rsplit("/", 1)[0] if "/" in p else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    data = (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()
    if fs.protocol in ("file", "local") or "file" in (fs.protocol if isinstance(fs.protocol, tuple) else ()):
        tmp = f"{p}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    else:
        fs.pipe_file(p, data)


def _read_pointer(path: str) -> dict[str, Any] | None:
    try:
        fs, p = fsspec.core.url_to_fs(path)
        if not fs.isfile(p) or fs.size(p) > _MAX_POINTER:
            return None
        doc = json.loads(fs.cat_file(p))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict) and doc.get("format") == POINTER_FORMAT and isinstance(doc.get("checkpoint"), str):
        return doc
    return None


def _pointers_beside(path: str) -> list[dict[str, Any]]:
    fs, p = fsspec.core.url_to_fs(path)
    parent = p.rsplit("/", 1)[0] if "/" in p else "."
    out = []
    try:
        entries = fs.ls(parent, detail=True)
    except (OSError, FileNotFoundError):
        return out
    for e in entries:
        if e.get("type") == "file" and (e.get("size") or 0) <= _MAX_POINTER:
            name = e["name"]
            doc = _read_pointer(name if "://" not in path else f"{path.split('://', 1)[0]}://{name}")
            if doc is not None:
                out.append(doc)
    return out

