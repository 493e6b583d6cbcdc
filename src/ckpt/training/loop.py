"""``fit``: a thin training loop whose checkpoints make a resumed run identical to an uninterrupted one.

One epoch, in order:

    1. put back the data-order state (generators at epoch start; on a mid-epoch resume, skip the batches
       already trained on, then put back the RNG state from after the last of them)
    2. train step by step; every ``save_every_steps`` steps, and when SIGTERM/SIGINT arrives, save a
       step checkpoint (never on the epoch's last batch: the epoch's own checkpoint follows)
    3. evaluate, step the scheduler, update early stopping and the history, save the epoch checkpoint
       with its metrics, apply retention
    4. stop early, on a signal, or at ``max_epochs``; at the end restore the store's best checkpoint

Every checkpoint holds all the state step 1 needs, captured right after the last step it covers.
Subclass :class:`Trainer` (``train_step``, ``evaluate``, ``state_dict``...) or pass callbacks for more.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ckpt.errors import CheckpointNotFoundError, InvalidArgumentError, MetricDirectionError
from ckpt.metrics import to_float
from ckpt.records import CheckpointInfo
from ckpt.retention import RetentionPolicy
from ckpt.training import data, guard, progress, resume, rng
from ckpt.training.early_stopping import EarlyStopping
from ckpt.training.history import History
from ckpt.training.signals import StopSignals

log = logging.getLogger("ckpt.training")
_END = object()


@dataclass
class FitResult:
    run: str
    epochs: int  # epochs completed, over all restarts
    global_step: int  # optimizer steps taken, over all restarts
    stop_reason: str  # "max_epochs" | "early_stopping" | "SIGTERM" | "SIGINT" | "callback"
    best: CheckpointInfo | None  # the store's best checkpoint by the monitored metric (restored into the model)
    last: CheckpointInfo | None  # the newest checkpoint of the run
    resumed_from: CheckpointInfo | None
    history: History
    early_stopping: EarlyStopping | None
    already_complete: bool = False  # the run had finished before this call: nothing was trained
    changes: tuple[str, ...] = ()  # differences from the checkpoint resumed from, accepted and recorded

    @property
    def interrupted(self) -> bool:
        return self.stop_reason in ("SIGTERM", "SIGINT")

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason == "early_stopping"


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


class Trainer:
    """The loop's state and steps; :func:`fit` documents the arguments."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_loader: Iterable[Any],
                 evaluate: Callable[[torch.nn.Module], Mapping[str, Any]] | None = None, *, store: Any, run: str,
                 max_epochs: int, monitor: str | None = "val_acc", mode: str | None = None,
                 patience: int | None = 5, min_epochs: int = 0, min_delta: float = 0.0, scheduler: Any = None,
                 scheduler_interval: str = "epoch", grad_scaler: Any = None, autocast: bool = False,
                 max_grad_norm: float | None = None, loss_fn: Callable[..., torch.Tensor] | None = None,
                 resume: Any = "auto", parent: Any = None, save_every_steps: int | None = None,
                 retention: Mapping[str, Any] | RetentionPolicy | None = None, restore_best: bool = True,
                 split: Any = None, stateful: Mapping[str, Any] | None = None, callbacks: Iterable[Any] = (),
                 progress: bool | str = "auto", verbose: bool = True, handle_signals: bool = True,
                 exit_on_signal: bool = True, save_every_epochs: int = 1, allow_changes: bool = False,
                 sanity_check: bool = True) -> None:
        from ckpt.store import CheckpointStore
        if not isinstance(store, CheckpointStore):
            store = CheckpointStore(os.fspath(store))
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise InvalidArgumentError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        if save_every_steps is not None and (not isinstance(save_every_steps, int) or save_every_steps < 1):
            raise InvalidArgumentError(f"save_every_steps must be a positive integer or None, got {save_every_steps!r}")
        if isinstance(save_every_epochs, bool) or not isinstance(save_every_epochs, int) or save_every_epochs < 1:
            raise InvalidArgumentError(f"save_every_epochs must be a positive integer, got {save_every_epochs!r}")
        if evaluate is None and monitor not in (None, "train_loss"):
            raise InvalidArgumentError(f"monitor={monitor!r} needs evaluate(model) returning it; without "
                                       f"validation pass monitor='train_loss' or monitor=None")
        if scheduler_interval not in ("epoch", "step"):
            raise InvalidArgumentError(f"scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
        self.model, self.optimizer, self.train_loader, self.evaluate_fn = model, optimizer, train_loader, evaluate
        self.store, self.run, self.max_epochs = store, run, max_epochs
        self.scheduler, self.scheduler_interval, self.grad_scaler = scheduler, scheduler_interval, grad_scaler
        self.autocast, self.max_grad_norm = autocast, max_grad_norm
        self.loss_fn = loss_fn or torch.nn.functional.cross_entropy
        self.resume, self.parent, self.save_every_steps, self.restore_best = resume, parent, save_every_steps, restore_best
        self.save_every_epochs, self.allow_changes, self.sanity_check = save_every_epochs, allow_changes, sanity_check
        self.split, self.stateful, self.callbacks = split, dict(stateful or {}), list(callbacks)
        self.progress, self.verbose = progress, verbose
        self.handle_signals, self.exit_on_signal = handle_signals, exit_on_signal
        self.monitor = monitor
        self.early_stopping = (EarlyStopping(monitor, mode, patience, min_delta, min_epochs)
                               if monitor is not None else None)
        self.mode = self.early_stopping.mode if self.early_stopping else None
        if isinstance(retention, Mapping):
            retention = RetentionPolicy(**retention)
        self.retention: RetentionPolicy | None = retention
        if retention is not None and retention.keep_best and monitor is None and retention.metric is None:
            raise InvalidArgumentError("retention keep_best needs a metric: pass monitor=... or metric= in retention")
        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")

        # Loop position; a checkpoint records all of it.
        self.epoch = 0  # the epoch being trained (or next to train)
        self.global_step = 0
        self.batches_done = 0  # in the current epoch
        self.loss_sum = 0.0  # of this epoch's batches, for train_loss
        self.history = History()
        self.stop_reason: str | None = None
        self.should_stop = False  # callbacks may set it; training stops after the current epoch
        self.last_loss: float | None = None
        self.metrics: dict[str, float] = {}
        self.last: CheckpointInfo | None = None
        self.resumed_from: CheckpointInfo | None = None
        self._epoch_start: dict[str, Any] | None = None  # data-order state at the start of this epoch
        self._pending: dict[str, Any] | None = None  # what a resume still has to put back
        self._bar: Any = None
        self.run_config: dict[str, Any] = {}  # what defines this run (guard.describe), saved in every checkpoint
        self._changes: tuple[str, ...] = ()
        self._change_note = ""

    # -- the steps a subclass may override ------------------------------------------------------
    def train_step(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The loss of one batch; the default reads ``(inputs, targets)`` and applies ``loss_fn``."""
        inputs, targets = batch
        return self.loss_fn(model(inputs), targets)

    def evaluate(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            out = self.evaluate_fn(self.model)
        if not isinstance(out, Mapping):
            raise InvalidArgumentError(f"evaluate(model) must return a dict of metrics, got {type(out).__name__}")
        return {k: to_float(k, v) for k, v in out.items()}

    def optimizer_step(self, loss: torch.Tensor) -> None:
        scaler = self.grad_scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            if self.max_grad_norm is not None:
                scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            scaler.step(self.optimizer)
            scaler.update()
        else:
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()

    # -- checkpoint contents ---------------------------------------------------------------------
    def state_dict(self, rng_state: dict[str, Any] | None = None, *, mid_epoch: bool) -> dict[str, Any]:
        return {
            resume.FORMAT_KEY: resume.FORMAT,
            guard.KEY: self.run_config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "loop": {"epoch": self.epoch, "global_step": self.global_step, "batches_done": self.batches_done,
                     "epoch_complete": not mid_epoch, "loss_sum": self.loss_sum, "stop_reason": self.stop_reason},
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "history": self.history.state_dict(),
            "rng": rng_state if rng_state is not None else rng.capture(),
            "data": {"generators": data.generator_states(self.train_loader),
                     "epoch_start": self._epoch_start if mid_epoch else None,
                     "split": self.split.state_dict() if self.split is not None else None,
                     "train_subset": data.subset_indices(self.train_loader)},
            "extra": {name: obj.state_dict() for name, obj in self.stateful.items()},
        }

    def load_state_dict(self, state: dict[str, Any], changes: Iterable[guard.Change] = ()) -> None:
        """Put back everything but the RNG and data-order state, which wait for the epoch to start.

        ``changes`` (accepted with allow_changes=True, or on a branch into a new run) win over the saved
        values: new optimizer and scheduler settings are set again after loading, and state that no longer
        fits (another optimizer class, a scheduler added or removed, another monitor) starts fresh."""
        changes = list(changes)
        fresh = {(c.part, c.key) for c in changes if c.key in (None, "monitor", "mode", "grad_scaler")}
        self.model.load_state_dict(state["model"])
        if ("optimizer", None) in fresh:
            log.warning("run %r: the optimizer changed; its state (momenta...) starts fresh", self.run)
        else:
            new = [(c.group, c.key, self.optimizer.param_groups[c.group][c.key])
                   for c in changes if c.part == "optimizer"]
            self.optimizer.load_state_dict(state["optimizer"])
            for group, key, value in new:
                self.optimizer.param_groups[group][key] = value  # type: ignore[index]
        for name in ("scheduler", "grad_scaler"):
            obj, saved = getattr(self, name), state[name]
            if (name, None) in fresh or ("fit", name) in fresh:
                continue
            if (obj is None) != (saved is None):
                raise InvalidArgumentError(f"the checkpoint was saved {'with' if saved is not None else 'without'} "
                                           f"a {name}, this run has {'one' if obj is not None else 'none'}; "
                                           f"resume with the same training setup")
            if obj is not None:
                new_settings = {c.key: getattr(obj, c.key) for c in changes if c.part == name and c.key}
                obj.load_state_dict(saved)
                for key, value in new_settings.items():
                    setattr(obj, key, value)
        monitor_changed = ("fit", "monitor") in fresh or ("fit", "mode") in fresh
        if self.early_stopping is not None and state["early_stopping"] is not None and not monitor_changed:
            self.early_stopping.load_state_dict(state["early_stopping"])
        self.history.load_state_dict(state["history"])
        for name, obj in self.stateful.items():
            obj.load_state_dict(state["extra"][name])
        d = state["data"]
        if self.split is not None:
            if d["split"] is None:
                raise InvalidArgumentError("the checkpoint holds no data split but split= was passed")
            self.split.load_state_dict(d["split"])
        now = data.subset_indices(self.train_loader)
        if d["train_subset"] is not None and now is not None and not torch.equal(d["train_subset"], now):
            raise InvalidArgumentError(
                "the training loader reads a different subset than the run being resumed (a random split "
                "drawn anew?); seed the split, or create it with ckpt.training.DataSplit and pass split=... "
                "so the checkpoint's indices are put back")
        loop = state["loop"]
        self.global_step, self.stop_reason = loop["global_step"], loop["stop_reason"]
        es = self.early_stopping
        if self.stop_reason == "early_stopping" and any(c.part == "fit" for c in changes):
            # New early-stopping settings (a larger patience...) decide again whether the run is over.
            done = (es is not None and not monitor_changed and es.patience is not None and es.wait >= es.patience
                    and loop["epoch"] + 1 >= es.min_epochs)
            if not done:
                self.stop_reason = None
                if es is not None:
                    es.stopped_epoch = None
        if loop["epoch_complete"]:
            self.epoch, self.batches_done, self.loss_sum = loop["epoch"] + 1, 0, 0.0
        else:
            self.epoch, self.batches_done, self.loss_sum = loop["epoch"], loop["batches_done"], loop["loss_sum"]
        self._pending = {"rng": state["rng"], "generators": d["generators"],
                         "epoch_start": None if loop["epoch_complete"] else d["epoch_start"]}

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        self.run_config = guard.describe(self)  # before anything is loaded into the objects it reads
        info, state = resume.find(self.store, self.run, self.resume)
        changes: list[guard.Change] = []
        if info is not None:
            changes = self._check_run(info, state)  # type: ignore[arg-type]
            self.load_state_dict(state, changes)  # type: ignore[arg-type]
            self.resumed_from = info
        if self.stop_reason == "max_epochs" and self.epoch < self.max_epochs:
            self.stop_reason = None  # max_epochs was raised: carry on
        if self.stop_reason is not None:
            return self._already_complete()
        if info is not None:
            self._say(f"resuming run {self.run!r} from {info.short_id} (epoch {info.epoch}, step {info.step})")
            if self._change_note and self.verbose:
                self._say(f"  {self._change_note}")
            elif self._change_note:
                log.warning("run %r resumes from %s %s", self.run, info.short_id, self._change_note)
        if self.sanity_check and (info is None or any(c.key in ("monitor", "mode") for c in changes)):
            self._check_monitor()
        if self.monitor is not None:
            self.store.set_objective(self.run, self.monitor, self.mode)
        self._changes = tuple(str(c) for c in changes)
        signals = StopSignals(self.handle_signals)
        try:
            with signals:
                self._callback("on_fit_start")
                while self.stop_reason is None and self.epoch < self.max_epochs:
                    self._train_epoch(signals)
                if self.stop_reason is None:
                    self.stop_reason = "max_epochs"
            interrupted = self.stop_reason in ("SIGTERM", "SIGINT")
            best = self._best() if interrupted else self._restore_best()
        except BaseException as exc:
            self._close_bar()
            self._mark("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
        self._mark("interrupted" if interrupted else "completed")
        result = FitResult(self.run, self.epoch, self.global_step, self.stop_reason, best,
                           self.last or self.resumed_from, self.resumed_from, self.history, self.early_stopping,
                           changes=self._changes)
        self._callback("on_fit_end", result)
        if interrupted:
            self._say(f"stopped by {self.stop_reason} at epoch {self.epoch}, step {self.global_step}; "
                      f"resume with resume='auto'")
            if self.exit_on_signal:
                raise SystemExit(128 + signals.received)  # type: ignore[operator]
        return result

    # -- before training ---------------------------------------------------------------------------
    def _check_run(self, info: CheckpointInfo, state: dict[str, Any]) -> list[guard.Change]:
        """Compare the run as set up now with the checkpoint's; stop before loading anything when they
        differ, unless the changes are allowed (allow_changes=True, or a branch into a new run name)."""
        recorded = state.get(guard.KEY) if isinstance(state.get(guard.KEY), dict) else {}
        history = list(recorded.get("changes") or [])
        changes = guard.compare(state, self.run_config, self.model)
        if changes:
            fixed = any(not c.overridable for c in changes)
            if fixed or (info.run == self.run and not self.allow_changes):
                raise guard.RunMismatchError(
                    guard.mismatch_message(self.run, info, changes, allow_changes=self.allow_changes), changes)
            history.append({"checkpoint": info.id, "run": info.run, "epoch": info.epoch, "step": info.step,
                            "changes": [str(c) for c in changes]})
            how = "allow_changes=True" if info.run == self.run else f"a new run branching from {info.run}"
            self._change_note = (f"with these changes ({how}; recorded in the run_config of its checkpoints): "
                                 + "; ".join(str(c) for c in changes))
        self.run_config = guard.merge(recorded or None, self.run_config, changes)
        self.run_config["changes"] = history
        return changes

    def _check_monitor(self) -> None:
        """Run evaluate once before training so that a ``monitor`` it does not return fails now, before
        any checkpoint, not after an epoch. What it draws from the RNGs is undone: the run stays exact."""
        if self.monitor is None or self.evaluate_fn is None or self.monitor == "train_loss":
            return
        state = rng.capture()
        try:
            metrics = self.evaluate()
        finally:
            rng.restore(state)
        if self.monitor not in metrics:
            raise InvalidArgumentError(
                f"monitor {self.monitor!r} is not among the metrics evaluate(model) returned: "
                f"{sorted(metrics) or 'none'} (plus train_loss, which fit adds); pass monitor= one of them, or "
                f"None for no early stopping and no best restore. Nothing was trained or saved")

    def _already_complete(self) -> FitResult:
        """A run that finished before: train nothing, say so, put its best weights in the model."""
        assert self.resumed_from is not None
        reason = self.stop_reason
        es = self.early_stopping
        if reason == "early_stopping" and es is not None:
            why = (f"early stopping ended it after epoch {self.epoch - 1} ({self.monitor} did not improve for "
                   f"{es.wait} epochs). To train on: pass a larger patience (or None) with allow_changes=True")
        elif reason == "max_epochs":
            why = f"it has trained all {self.epoch} epochs of max_epochs={self.max_epochs}. To train on: raise max_epochs"
        else:
            why = f"it stopped ({reason}) after epoch {self.epoch - 1}. To train on: start a new run"
        self._say(f"run {self.run!r} is already complete ({self.resumed_from.short_id} is its last checkpoint): "
                  f"{why}, or pass a new run= name to start another run. Nothing was trained")
        best = self._restore_best() if self.restore_best else self._best()
        self._mark("completed")
        return FitResult(self.run, self.epoch, self.global_step, reason, best, self.resumed_from,  # type: ignore[arg-type]
                         self.resumed_from, self.history, self.early_stopping, already_complete=True)

    def _train_epoch(self, signals: StopSignals) -> None:
        loader = self.train_loader
        data.set_epoch(loader, self.epoch)
        pending, self._pending = self._pending, None
        if pending is not None and pending["epoch_start"] is not None:  # resume inside this epoch
            self._epoch_start = pending["epoch_start"]
            rng.restore(self._epoch_start["rng"])  # type: ignore[index]
            data.set_generator_states(loader, self._epoch_start["generators"])  # type: ignore[index]
            it = data.epoch_iterator(loader, skip=self.batches_done)  # the sampler redraws what it drew
            self._callback("on_epoch_start")
            rng.restore(pending["rng"])  # ...then the state after the last trained batch
        else:
            if pending is not None:  # resume at an epoch boundary
                rng.restore(pending["rng"])
                data.set_generator_states(loader, pending["generators"])
            self._epoch_start = {"rng": rng.capture(), "generators": data.generator_states(loader)}
            self.batches_done, self.loss_sum = 0, 0.0
            it = data.epoch_iterator(loader)
            self._callback("on_epoch_start")
        n = data.num_batches(loader)
        self.model.train()
        self._bar = progress.epoch_bar(self.epoch, n, self.batches_done) if progress.wants_bar(self.progress) else None
        while True:
            batch = next(it, _END)
            if batch is _END:
                break
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.autocast):
                loss = self.train_step(self.model, to_device(batch, self.device))
            self.optimizer_step(loss)
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
            self.last_loss = float(loss.detach().item())
            self.global_step += 1
            self.batches_done += 1
            self.loss_sum += self.last_loss
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix(progress.postfix({"loss": self.loss_sum / self.batches_done}), refresh=False)
            self._callback("on_step_end")
            due = self.save_every_steps is not None and self.global_step % self.save_every_steps == 0
            if due or signals.received is not None:
                it, saved = self._save_mid_epoch(it, n)
                if saved and signals.received is not None:
                    self.stop_reason = signals.name
                    self._close_bar()
                    return
        self._end_epoch(signals)

    def _save_mid_epoch(self, it: Any, n: int | None) -> tuple[Any, bool]:
        """Save a step checkpoint unless this was the epoch's last batch (the epoch checkpoint follows).
        Returns the iterator to go on with and whether it saved. Without len(loader), peeking one batch
        tells; the RNG state saved is the one from before the peek, so a resume loads that batch exactly
        as this run did. At the end the iterator is still run to exhaustion: samplers draw there too."""
        state_rng = rng.capture()
        if n is not None:
            if self.batches_done >= n:
                return it, False
        else:
            nxt = next(it, _END)
            if nxt is _END:
                return iter(()), False
            it = itertools.chain([nxt], it)
        self._save(metrics=None, rng_state=state_rng, mid_epoch=True)
        return it, True

    def _end_epoch(self, signals: StopSignals) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this epoch trained with
        metrics = {"train_loss": self.loss_sum / max(self.batches_done, 1), **self.evaluate()}
        if self.monitor is not None and self.monitor not in metrics:
            raise InvalidArgumentError(f"monitor {self.monitor!r} is not among the epoch's metrics "
                                       f"{sorted(metrics)}; pass monitor= one of them (or None)")
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(metrics[self.monitor] if self.monitor else metrics["train_loss"])
            else:
                self.scheduler.step()
        best_yet = self._best_so_far(metrics)
        improved = False
        if self.early_stopping is not None:
            improved = self.early_stopping.improves(metrics[self.monitor])  # type: ignore[index]
            if self.early_stopping.update(self.epoch, metrics[self.monitor]):  # type: ignore[index]
                self.stop_reason = "early_stopping"
        self.metrics = metrics
        self.history.append({"epoch": self.epoch, "step": self.global_step, **metrics, "lr": lr})
        self._callback("on_epoch_end")
        if self.should_stop and self.stop_reason is None:
            self.stop_reason = "callback"
        if self.stop_reason is None and self.epoch + 1 >= self.max_epochs:
            self.stop_reason = "max_epochs"
        due = ((self.epoch + 1) % self.save_every_epochs == 0 or self.stop_reason is not None or best_yet
               or signals.received is not None)
        info = self._save(metrics=metrics, rng_state=None, mid_epoch=False) if due else None
        if self._bar is not None:
            self._bar.set_postfix(progress.postfix({"loss": metrics["train_loss"], **metrics}))
        self._close_bar()
        self._say(progress.summary(self.epoch, metrics, best=improved, saved=info))
        self.epoch += 1
        self.batches_done, self.loss_sum = 0, 0.0
        if signals.received is not None and self.stop_reason is None:
            self.stop_reason = signals.name

    def _best_so_far(self, metrics: Mapping[str, float]) -> bool:
        """Whether this epoch's monitored value beats every earlier epoch's (so its checkpoint is the best
        and is saved even between save_every_epochs)."""
        if self.monitor is None or self.save_every_epochs == 1:
            return False
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        earlier = [r[self.monitor] for r in self.history if math.isfinite(r.get(self.monitor, math.nan))]
        if not earlier:
            return True
        return value > max(earlier) if self.mode == "max" else value < min(earlier)

    def _save(self, *, metrics: dict[str, float] | None, rng_state: dict[str, Any] | None,
              mid_epoch: bool) -> CheckpointInfo:
        state = self.state_dict(rng_state, mid_epoch=mid_epoch)
        parent = None
        if self.last is None:  # first save of this process: link to where the run came from
            parent = self.resumed_from if self.resumed_from is not None else self.parent
        info = self.store.save(self.run, self.epoch, state, metrics, step=self.global_step, parent=parent)
        self.last = info
        if self.retention is not None:
            r = self.retention
            self.store.prune(run=self.run, keep_last=r.keep_last, keep_best=r.keep_best, keep_every=r.keep_every,
                             metric=r.metric or self.monitor, mode=r.mode or (self.mode if r.metric is None else None))
        self._callback("on_save", info)
        return info

    # -- the end ---------------------------------------------------------------------------------
    def _best(self) -> CheckpointInfo | None:
        if self.monitor is None:
            return None
        try:
            return self.store.best(self.monitor, self.mode, run=self.run)
        except (CheckpointNotFoundError, MetricDirectionError):
            return None

    def _restore_best(self) -> CheckpointInfo | None:
        """Load the store's best checkpoint of this run into the model (a damaged one is skipped)."""
        if self.monitor is None or not self.restore_best:
            return self._best()
        try:
            report = self.store.load_into(self.model, f"{self.run}:best:{self.monitor}")
        except CheckpointNotFoundError:
            log.warning("no checkpoint of run %r has a finite %s; the model keeps its last weights",
                        self.run, self.monitor)
            return None
        best = report.checkpoint
        if best is not None:
            self._say(f"restored the best checkpoint {best.short_id} (epoch {best.epoch}, "
                      f"{self.monitor} {progress.fmt(best.metrics[self.monitor])}) into the model")
        return best

    def _mark(self, status: str) -> None:
        try:
            self.store.finish_run(self.run, status)
        except Exception:  # never hide the error that got us here
            log.exception("could not mark run %r as %s", self.run, status)

    # -- small helpers ---------------------------------------------------------------------------
    def _callback(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(self, *args)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _say(self, msg: str) -> None:
        if not self.verbose:
            return
        log.info(msg)
        if progress.wants_bar(self.progress):
            from tqdm.auto import tqdm
            tqdm.write(msg)
        else:
            print(msg, flush=True)


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_loader: Iterable[Any],
        evaluate: Callable[[torch.nn.Module], Mapping[str, Any]] | None = None, *, store: Any, run: str,
        max_epochs: int, monitor: str | None = "val_acc", mode: str | None = None, patience: int | None = 5,
        min_delta: float = 0.0, min_epochs: int = 0, loss_fn: Callable[..., torch.Tensor] | None = None,
        scheduler: Any = None, scheduler_interval: str = "epoch", grad_scaler: Any = None, autocast: bool = False,
        max_grad_norm: float | None = None, resume: Any = "auto", allow_changes: bool = False, parent: Any = None,
        save_every_steps: int | None = None, save_every_epochs: int = 1,
        retention: Mapping[str, Any] | RetentionPolicy | None = None, restore_best: bool = True,
        split: Any = None, stateful: Mapping[str, Any] | None = None, callbacks: Iterable[Any] = (),
        sanity_check: bool = True, progress: bool | str = "auto", verbose: bool = True,
        handle_signals: bool = True, exit_on_signal: bool = True) -> FitResult:
    """Train ``model`` with checkpoints in ``store`` under ``run``; resume, stop early, restore the best.

    Where and how long:
        store: a CheckpointStore, or a path/URL to open one.
        run: the run's name; re-running the script with the same name continues it.
        max_epochs: epochs in total, over all restarts (raising it continues a finished run).

    Training:
        loss_fn: called as ``loss_fn(model(inputs), targets)`` per ``(inputs, targets)`` batch; default
            cross-entropy (subclass Trainer and override ``train_step`` for anything else).
        scheduler, scheduler_interval: stepped per "epoch" (ReduceLROnPlateau gets the monitored value)
            or per "step".
        grad_scaler, autocast: mixed precision. max_grad_norm: gradient clipping.

    Validation and stopping:
        evaluate: ``evaluate(model) -> dict`` of metrics after each epoch (eval mode, no_grad).
        monitor: the metric early stopping and "best" use (None: neither). mode: "max"/"min", inferred
            from the name when None. patience (None: never stop early), min_delta, min_epochs: the
            Keras/Lightning early-stopping rule.
        sanity_check: on a fresh run, call evaluate once before training so that a monitor it does not
            return fails at once, before any checkpoint (its RNG draws are undone).
        restore_best: load the store's best checkpoint by monitor into the model at the end.

    Checkpoints:
        save_every_epochs: save every N epochs (default 1); the last epoch, an early stop, a signal and
            an epoch that beats every earlier one on monitor are saved anyway.
        save_every_steps: also save every N optimizer steps (resumable at that exact batch).
        retention: e.g. ``dict(keep_last=3, keep_best=2)`` or a RetentionPolicy; prunes after each save.
        split: a DataSplit whose indices travel with every checkpoint. stateful: ``{name: obj}`` with
            state_dict/load_state_dict (an EMA...), saved in every checkpoint.

    Resuming:
        resume: "auto" continues the run from its latest good checkpoint (fresh start when it has none);
            a selector resumes from that checkpoint (into a new run name to branch); None starts fresh
            (an error if the run has checkpoints).
        allow_changes: the run's definition (optimizer class and hyperparameters, scheduler settings,
            loss, early-stopping settings, batch size and dataset size) is saved with its checkpoints; a
            resume whose setup differs raises RunMismatchError naming each change, unless this is True:
            then the new settings win and the change is recorded in the checkpoints' ``run_config``. A
            changed model or split can never be resumed into. A run that already finished trains nothing
            and returns at once (``result.already_complete``).
        parent: lineage parent of a fresh run's first checkpoint (e.g. the pretrained checkpoint).

    Interruptions and output:
        handle_signals, exit_on_signal: SIGTERM/SIGINT finish the current step, save, mark the run
            interrupted and exit with status 128+signal (or, without exit_on_signal, return with
            ``result.interrupted``). An exception marks the run failed and keeps its last good checkpoint.
        progress: "auto" draws a tqdm bar per epoch when stderr is a terminal. verbose: one line per epoch.
        callbacks: objects with any of on_fit_start, on_epoch_start, on_step_end, on_epoch_end,
            on_save(info), on_fit_end(result), each called with the Trainer first.
    """
    return Trainer(model, optimizer, train_loader, evaluate, store=store, run=run, max_epochs=max_epochs,
                   monitor=monitor, mode=mode, patience=patience, min_delta=min_delta, min_epochs=min_epochs,
                   loss_fn=loss_fn, scheduler=scheduler, scheduler_interval=scheduler_interval,
                   grad_scaler=grad_scaler, autocast=autocast, max_grad_norm=max_grad_norm, resume=resume,
                   allow_changes=allow_changes, parent=parent, save_every_steps=save_every_steps,
                   save_every_epochs=save_every_epochs, retention=retention, restore_best=restore_best,
                   split=split, stateful=stateful, callbacks=callbacks, sanity_check=sanity_check,
                   progress=progress, verbose=verbose, handle_signals=handle_signals,
                   exit_on_signal=exit_on_signal).fit()
