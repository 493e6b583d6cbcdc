"""Hugging Face transformers: a ``TrainerCallback`` that keeps Trainer checkpoints in a ckpt store.

    from ckpt.integrations.huggingface import CkptCallback

    cb = CkptCallback("s3://bucket/ckpts", run="gpt2-ft", index="postgresql+psycopg://db/ckpt", keep_local=False)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train()
    trainer.train(resume_from_checkpoint=cb.checkout("latest"))        # any ckpt selector
    trainer.train(resume_from_checkpoint=cb.checkout("best:eval_loss"))

Each time the Trainer saves ``checkpoint-STEP/``, the callback stores that directory as one store
checkpoint ``run@EPOCH`` with ``step = global_step`` and the step's logged numbers as metrics: weights
(``*.safetensors``) and the optimizer and scheduler states (``*.pt`` / ``*.bin`` that load with
``weights_only=True``) as tensors, so unchanged tensors are deduplicated; every other file (JSON
configs, tokenizer files, ``rng_state.pth``, ``training_args.bin``) as its exact bytes. ckpt never
unpickles any of them. With ``keep_local=False`` the directory is deleted once it is in the store.

``checkout(selector)`` writes a stored checkpoint back as a directory the Trainer resumes from
(``resume_from_checkpoint`` only takes paths), byte-compatible with what the Trainer wrote: the same
file names, safetensors tensors and metadata, optimizer/scheduler states, and verbatim extra files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - optional extra
    raise ImportError("ckpt.integrations.huggingface needs transformers: pip install 'ckpt[huggingface]'") from exc

from ckpt.errors import CkptError, DuplicateCheckpointError, UnsupportedTypeError

__all__ = ["CkptCallback", "store_checkpoint_dir", "checkout"]

log = logging.getLogger("ckpt")
FORMAT = "hf-trainer-checkpoint-1"
_TORCH_SUFFIXES = (".pt", ".bin", ".pth")


def _open_store(store: Any, index: str | None, storage_options: dict | None) -> Any:
    if isinstance(store, (str, os.PathLike)):
        from ckpt import CheckpointStore
        return CheckpointStore(os.fspath(store), index=index, storage_options=storage_options)
    return store


def _file_entry(path: str) -> dict[str, Any]:
    """One checkpoint file as stored: tensors where the format allows it, exact bytes otherwise."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
        return {"kind": "safetensors", "tensors": tensors, "metadata": dict(metadata)}
    if path.endswith(_TORCH_SUFFIXES):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # pickles of arbitrary objects (training_args.bin, some rng states): keep bytes
            state = None
        if state is not None:
            from ckpt import CheckpointStore
            try:
                CheckpointStore.check_state(state)  # refuse at save time what ckpt could not store
                return {"kind": "torch", "state": state}
            except (UnsupportedTypeError, CkptError):
                pass
    with open(path, "rb") as f:
        raw = f.read()
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return {"kind": "bytes", "data": data}


def store_checkpoint_dir(store: Any, directory: str, run: str, epoch: int, *, step: int | None = None,
                         metrics: dict[str, float] | None = None) -> Any:
    """Store a Trainer checkpoint directory (every file below it) as one checkpoint; returns its info."""
    files: dict[str, Any] = {}
    for root, _dirs, names in os.walk(directory):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            files[rel] = _file_entry(full)
    state = {"format": FORMAT, "name": os.path.basename(os.path.normpath(directory)), "files": files}
    return store.save(run, epoch, state, metrics or {}, step=step)


def checkout(store: Any, selector: Any = "latest", directory: str | None = None, *, run: str | None = None) -> str:
    """Write a stored Trainer checkpoint as a directory and return its path (for resume_from_checkpoint).

    The directory is built beside its final name and renamed into place, so concurrent checkouts (one
    per process of a distributed job) all see a complete directory. An existing checkout is reused.
    """
    from safetensors.torch import save_file
    info = store.get(selector, run=run)
    if directory is None:
        directory = os.path.join(tempfile.gettempdir(), "ckpt-checkout", info.id)
    if os.path.isdir(directory) and os.path.exists(os.path.join(directory, ".ckpt-checkout")):
        return directory
    state = store.load(info.id)
    if not (isinstance(state, dict) and state.get("format") == FORMAT):
        raise CkptError(f"checkpoint {info.short_id} was not stored by the Hugging Face callback; "
                        f"load it with store.load(...)")
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    os.makedirs(tmp)
    try:
        for rel, entry in state["files"].items():
            target = os.path.join(tmp, *rel.split("/"))
            if not os.path.abspath(target).startswith(os.path.abspath(tmp) + os.sep):
                raise CkptError(f"refusing to write {rel!r} outside the checkout directory")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            kind = entry["kind"]
            if kind == "safetensors":
                tensors = {k: v.contiguous() for k, v in entry["tensors"].items()}
                save_file(tensors, target, metadata=entry.get("metadata") or None)
            elif kind == "torch":
                torch.save(entry["state"], target)
            else:
                with open(target, "wb") as f:
                    f.write(entry["data"].numpy().tobytes())
        with open(os.path.join(tmp, ".ckpt-checkout"), "w") as f:
            json.dump({"checkpoint": info.id, "run": info.run, "epoch": info.epoch, "step": info.step}, f)
        try:
            os.rename(tmp, directory)
        except OSError:
            if os.path.exists(os.path.join(directory, ".ckpt-checkout")):  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _step_metrics(state: Any) -> dict[str, float]:
    """The numbers the Trainer logged at this step (loss, eval_*, learning_rate, ...)."""
    out: dict[str, float] = {}
    for entry in state.log_history or []:
        if entry.get("step") != state.global_step:
            continue
        for k, v in entry.items():
            if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(k, str) and 0 < len(k) <= 256 and math.isfinite(float(v)):
                out[k] = float(v)
    return out


class CkptCallback(TrainerCallback):
    """Store every Trainer checkpoint in a ckpt store; resume from any of them by selector.

    ``store`` is a :class:`~ckpt.CheckpointStore` or a location (with ``index`` and
    ``storage_options``). ``run`` defaults to ``args.run_name``. Only the main process writes.
    """

    def __init__(self, store: Any, run: str | None = None, *, index: str | None = None,
                 storage_options: dict[str, Any] | None = None, keep_local: bool = True) -> None:
        self._store_arg = store
        self._index = index
        self._storage_options = storage_options
        self._store = None if isinstance(store, (str, os.PathLike)) else store
        self.run = run
        self.keep_local = keep_local
        self.saved: list[Any] = []  # CheckpointInfo of each save, in order
        self._objective_set = False

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = _open_store(self._store_arg, self._index, self._storage_options)
        return self._store

    def _run_name(self, args: Any) -> str:
        if self.run is None:
            self.run = str(getattr(args, "run_name", None) or os.path.basename(os.path.normpath(args.output_dir)))
        return self.run

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        directory = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(directory):
            log.warning("ckpt: Trainer checkpoint %s not found; nothing stored", directory)
            return
        run = self._run_name(args)
        epoch = int(math.floor(state.epoch or 0))
        try:
            info = store_checkpoint_dir(self.store, directory, run, epoch, step=state.global_step,
                                        metrics=_step_metrics(state))
        except DuplicateCheckpointError:
            raise DuplicateCheckpointError(
                f"run {run!r} already has a checkpoint at epoch {epoch}, step {state.global_step}: a new "
                f"training run under the same name? pass CkptCallback(run=...) or resume from it") from None
        self.saved.append(info)
        if not self._objective_set and getattr(args, "metric_for_best_model", None):
            metric = args.metric_for_best_model
            metric = metric if metric.startswith("eval_") else f"eval_{metric}"
            mode = "max" if getattr(args, "greater_is_better", False) else "min"
            self.store.set_objective(run, metric, mode)
            self._objective_set = True
        if not self.keep_local:
            shutil.rmtree(directory, ignore_errors=True)

    def checkout(self, selector: Any = "latest", directory: str | None = None) -> str:
        """A directory holding the selected checkpoint, for ``trainer.train(resume_from_checkpoint=...)``.

        ``latest`` and ``best`` forms are resolved within this callback's run when it has one.
        """
        scoped = isinstance(selector, str) and (selector in ("latest", "best") or selector.startswith("best:"))
        return checkout(self.store, selector, directory, run=self.run if scoped else None)

