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
resolve to store checkpoints. When Lightning removes a path, the pointer goes, and the checkpoint too
once no pointer in that directory names it (``delete_removed=False`` keeps it in the store and leaves
retention to ``ckpt prune``).

``load_checkpoint`` accepts a pointer file, ``ckpt:SELECTOR`` (any ckpt selector, resolved within the
plugin's run for ``latest``/``best`` forms), a bare selector, or an ordinary Lightning ``.ckpt`` file
(loaded with torch as Lightning would).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import fsspec

from ckpt.errors import CheckpointNotFoundError, DuplicateCheckpointError, SelectorError

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("ckpt.integrations.lightning needs Lightning: pip install 'ckpt[lightning]'") from exc

__all__ = ["CkptCheckpointIO", "POINTER_FORMAT"]

log = logging.getLogger("ckpt")
POINTER_FORMAT = "ckpt-pointer-1"
_MAX_POINTER = 64 * 1024
PREFIX = "ckpt:"


class CkptCheckpointIO(CheckpointIO):
    """Store Lightning checkpoints in a ckpt store (see the module docstring).

    ``store`` is a :class:`~ckpt.CheckpointStore` or a location (opened lazily in each process with
    ``index`` and ``storage_options``, which is what multi-process strategies need: the plugin is
    pickled to the workers, an open store is not).
    """

    def __init__(self, store: Any, run: str, *, index: str | None = None,
                 storage_options: dict[str, Any] | None = None, delete_removed: bool = True) -> None:
        from ckpt import validation
        self.run = validation.run_name(run)
        self.delete_removed = delete_removed
        self._index = index
        self._storage_options = storage_options
        if isinstance(store, (str, os.PathLike)):
            self._location: str | None = os.fspath(store)
            self._store = None
        else:
            self._location = None
            self._store = store
        self._saved: set[str] = set()  # ids this plugin instance saved (aliasing repeated steps)
        self._next_metrics: dict[str, float] = {}

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
        """A callback that records ``trainer.callback_metrics`` with every checkpoint (for ``best:...``)."""
        return _MetricsCallback(self)

    # -- CheckpointIO ---------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        epoch = int(checkpoint.get("epoch", 0))
        step = int(checkpoint.get("global_step", 0))
        metrics = dict(self._next_metrics) or _monitored(checkpoint)
        self._next_metrics = {}
        state = _plain(checkpoint)
        try:
            info = self.store.save(self.run, epoch, state, metrics, step=step)
        except DuplicateCheckpointError:
            # Lightning saves twice at one step (a top-k file and last.ckpt): the second path names the
            # checkpoint this plugin just made. A clash with anything else (an earlier run under the
            # same name) is a real error.
            same = [i for i in self.store.list(self.run) if i.epoch == epoch and i.step == step]
            if not same or same[0].id not in self._saved:
                raise
            info = same[0]
        self._saved.add(info.id)
        _write_pointer(str(path), {"format": POINTER_FORMAT, "checkpoint": info.id, "run": info.run,
                                   "epoch": info.epoch, "step": info.step, "store": self.store.location})

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        target = self.resolve(path)
        if target is None:  # an ordinary Lightning checkpoint file: load it the way Lightning does
            from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
            return TorchCheckpointIO().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        location = map_location if isinstance(map_location, (str, bytes)) or _is_device(map_location) else None
        return self.store.load(target, map_location=location)

    def remove_checkpoint(self, path: Any) -> None:
        path = str(path)
        pointer = _read_pointer(path)
        fs, p = fsspec.core.url_to_fs(path)
        if pointer is None:
            if fs.exists(p):  # not ours: behave like Lightning's own plugin
                fs.rm(p, recursive=True)
            return
        fs.rm(p)
        if not self.delete_removed:
            return
        ckpt_id = pointer["checkpoint"]
        if any(other.get("checkpoint") == ckpt_id for other in _pointers_beside(path)):
            return  # still named by another file (e.g. last.ckpt)
        try:
            self.store.delete(ckpt_id)
        except CheckpointNotFoundError:
            pass
        self._saved.discard(ckpt_id)

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
        scoped = selector in ("latest", "best") or selector.startswith("best:")
        return self.store.get(selector, run=self.run if scoped else None).id


class _MetricsCallback(Callback):
    def __init__(self, io: CkptCheckpointIO) -> None:
        self.io = io

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


def _is_device(x: Any) -> bool:
    import torch
    return isinstance(x, torch.device)


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

