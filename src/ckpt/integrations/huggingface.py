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

One ``train()`` is one run. The Trainer saves a step once, so two states never meet at one (epoch,
step) within a run; a step another ``train()`` or process already stored is a
:class:`~ckpt.errors.DuplicateCheckpointError` (never a merge), and a callback reused for a second
``train()`` from scratch into the run it wrote before is refused before it trains. Without ``run=``
each ``train()`` takes its run from its own ``args.run_name``; the trials of
``trainer.hyperparameter_search`` each get a run of their own (``RUN.run-3``). Only a directory the
Trainer wrote during this ``train()`` is stored, never a stale one from an earlier run. With
``args.metric_for_best_model`` the run's objective is declared (``eval_`` + the metric, ``max`` when
``greater_is_better``), so ``best`` and ``ckpt restore best`` need nothing more.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - optional extra
    raise ImportError("ckpt.integrations.huggingface needs transformers: pip install 'ckpt[huggingface]'") from exc

from ckpt.errors import CkptError, DuplicateCheckpointError, UnsupportedTypeError
from ckpt.integrations._objective import declare_objective

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


def _objective_of(args: Any) -> tuple[str, str] | None:
    """The (metric, mode) ``args.metric_for_best_model`` means, as the Trainer reads it."""
    metric = getattr(args, "metric_for_best_model", None)
    if not metric:
        return None
    greater = getattr(args, "greater_is_better", None)
    if greater is None:  # the Trainer's own default when it is not given
        greater = not metric.endswith("loss")
    return (metric if metric.startswith("eval_") else f"eval_{metric}"), ("max" if greater else "min")


def _written_since(directory: str, since: float | None) -> bool:
    """Whether the Trainer wrote this checkpoint directory during the current train()."""
    marker = os.path.join(directory, "trainer_state.json")
    try:
        written = os.path.getmtime(marker if os.path.exists(marker) else directory)
    except OSError:
        return False
    return since is None or written >= since - 2.0  # file-system timestamps may be coarse


def _checkpoint_dir(args: Any, state: Any, since: float | None) -> str | None:
    """The directory the Trainer just saved: ``output_dir/checkpoint-STEP``, or under a trial's run
    directory during a hyperparameter search; only one written during this train()."""
    name = f"checkpoint-{state.global_step}"
    found = [os.path.join(args.output_dir, name)]
    if getattr(state, "is_hyper_param_search", False) or getattr(state, "trial_name", None):
        try:
            found = [os.path.join(args.output_dir, d, name) for d in os.listdir(args.output_dir)] + found
        except OSError:
            pass
    fresh = [d for d in found if os.path.isdir(d) and _written_since(d, since)]
    if not fresh:
        return None
    return max(fresh, key=lambda d: os.path.getmtime(os.path.join(d, "trainer_state.json"))
               if os.path.exists(os.path.join(d, "trainer_state.json")) else os.path.getmtime(d))


class CkptCallback(TrainerCallback):
    """Store every Trainer checkpoint in a ckpt store; resume from any of them by selector.

    ``store`` is a :class:`~ckpt.CheckpointStore` or a location (with ``index`` and
    ``storage_options``). ``run`` defaults to each ``train()``'s ``args.run_name``; ``cb.run`` is the
    run of the current (or last) ``train()``. Only the main process writes.
    """

    def __init__(self, store: Any, run: str | None = None, *, index: str | None = None,
                 storage_options: dict[str, Any] | None = None, keep_local: bool = True) -> None:
        from ckpt import validation
        self._store_arg = store
        self._index = index
        self._storage_options = storage_options
        self._store = None if isinstance(store, (str, os.PathLike)) else store
        self._run_arg = validation.run_name(run) if run is not None else None
        self.run = self._run_arg
        self.keep_local = keep_local
        self.saved: list[Any] = []  # CheckpointInfo of each save, in order (every train() of this callback)
        self._train_ids: set[str] = set()  # what this train() stored
        self._train_runs: set[str] = set()  # runs this train() wrote to
        self._earlier_runs: set[str] = set()  # runs earlier train()s of this callback wrote to
        self._objectives: set[str] = set()  # runs whose objective this train() looked at
        self._started: float | None = None

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = _open_store(self._store_arg, self._index, self._storage_options)
        return self._store

    def _base_run(self, args: Any) -> str:
        from ckpt import validation
        if self._run_arg is not None:
            return self._run_arg
        return validation.run_name(str(getattr(args, "run_name", None) or
                                       os.path.basename(os.path.normpath(args.output_dir))))

    def _run_for(self, args: Any, directory: str) -> str:
        """The run of a save: a hyperparameter-search trial's directory makes a run of its own."""
        from ckpt import validation
        base = self._base_run(args)
        parent = os.path.dirname(os.path.normpath(directory))
        if os.path.normpath(parent) != os.path.normpath(args.output_dir):
            return validation.run_name(f"{base}.{os.path.basename(parent)}")
        return base

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A new train(): forget the last one's saves. Starting from scratch into a run an earlier
        train() of this callback wrote would mix two trainings in one run: refused before training."""
        self._earlier_runs |= self._train_runs
        self._train_runs, self._train_ids, self._objectives = set(), set(), set()
        self._started = time.time()
        self.run = self._base_run(args)
        if getattr(state, "is_hyper_param_search", False):
            return  # each trial has a run of its own
        # Decided from what this callback saw, the same in every process of a distributed job (the
        # others record the runs too, without writing), so that all stop or none does.
        if state.global_step == 0 and self.run in self._earlier_runs:
            raise DuplicateCheckpointError(
                f"run {self.run!r} already holds the checkpoints of an earlier train() with this CkptCallback, "
                f"and this train() starts from scratch: its checkpoints would be mixed with (or clash with) the "
                f"earlier ones. Give each train() its own run (TrainingArguments(run_name=...) with "
                f"CkptCallback(run=None), or a CkptCallback(run='NAME') per train()); to continue the earlier "
                f"training, resume_from_checkpoint=cb.checkout('latest')")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            if not getattr(state, "is_hyper_param_search", False):
                self._train_runs.add(self._base_run(args))
            return
        directory = _checkpoint_dir(args, state, self._started)
        if directory is None:
            log.warning("ckpt: no Trainer checkpoint checkpoint-%s written by this train() under %s; nothing "
                        "stored", state.global_step, args.output_dir)
            return
        run = self._run_for(args, directory)
        self.run = run
        epoch = int(math.floor(state.epoch or 0))
        try:
            info = store_checkpoint_dir(self.store, directory, run, epoch, step=state.global_step,
                                        metrics=_step_metrics(state))
        except DuplicateCheckpointError:
            raise DuplicateCheckpointError(self._clash(run, epoch, state.global_step)) from None
        self.saved.append(info)
        self._train_ids.add(info.id)
        self._train_runs.add(run)
        objective = _objective_of(args)
        if objective is not None and run not in self._objectives:
            self._objectives.add(run)
            declare_objective(self.store, run, *objective, "metric_for_best_model")
        if not self.keep_local:
            shutil.rmtree(directory, ignore_errors=True)

    def _clash(self, run: str, epoch: int, step: int) -> str:
        held = [i for i in self.store.list(run) if i.epoch == epoch and i.step == step]
        ours = {s.id for s in self.saved} - self._train_ids
        who = "an earlier train() of this callback" if any(i.id in ours for i in held) \
            else "another training (another process, or an earlier script)"
        ids = ", ".join(i.short_id for i in held) or "being saved"
        return (f"run {run!r} already has a checkpoint at epoch {epoch}, step {step} ({ids}), stored by {who}; "
                f"ckpt never merges two trainings' states. Give this training its own run (CkptCallback(run=...) "
                f"or TrainingArguments(run_name=...)), resume from the stored one "
                f"(trainer.train(resume_from_checkpoint=cb.checkout('latest'))), or delete it first: "
                f"ckpt rm {held[0].id if held else run}")

    def checkout(self, selector: Any = "latest", directory: str | None = None) -> str:
        """A directory holding the selected checkpoint, for ``trainer.train(resume_from_checkpoint=...)``.

        ``latest`` and ``best`` forms are resolved within this callback's run when it has one.
        """
        scoped = isinstance(selector, str) and (selector in ("latest", "best") or selector.startswith("best:"))
        return checkout(self.store, selector, directory, run=self.run if scoped else None)
