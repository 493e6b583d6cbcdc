"""Which checkpoint a run resumes from: ``"auto"`` (the run's latest good one), a selector, or none."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ckpt.errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidArgumentError
from ckpt.records import CheckpointInfo

log = logging.getLogger("ckpt.training")
FORMAT_KEY = "ckpt_training"  # marks a checkpoint written by this loop; the value is its layout version
FORMAT = 1


def run_checkpoints(store: Any, run: str) -> list[CheckpointInfo]:
    try:
        return store.list(run=run)
    except CheckpointNotFoundError:  # no such run yet
        return []


def _check_layout(info: CheckpointInfo, state: Any) -> dict:
    if not isinstance(state, dict) or state.get(FORMAT_KEY) != FORMAT:
        raise InvalidArgumentError(
            f"checkpoint {info.short_id} ({info.run}@{info.epoch}) was not written by ckpt.training.fit "
            f"(layout {FORMAT}), so it cannot be resumed; load its weights with "
            f"ckpt.training.load_pretrained(...) and start a new run instead")
    return state


def find(store: Any, run: str, resume: Any) -> tuple[CheckpointInfo | None, dict | None]:
    """The checkpoint to resume ``run`` from and its state; (None, None) for a fresh start."""
    existing = run_checkpoints(store, run)
    if resume is None or resume is False or resume == "never":
        if existing:
            raise InvalidArgumentError(
                f"run {run!r} already has {len(existing)} checkpoint(s); pass resume='auto' to continue it, "
                f"or choose a new run name")
        return None, None
    if resume is True or resume == "auto":
        return _latest_good(store, run, existing)
    info = store.get(resume)
    if existing and existing[-1].id != info.id:
        where = "is not that run's latest checkpoint" if info.run == run else "is from another run"
        raise InvalidArgumentError(
            f"cannot resume run {run!r} from {info.short_id} ({info.run}@{info.epoch}): run {run!r} already has "
            f"checkpoints up to epoch {existing[-1].epoch} and {info.short_id} {where}. Resume into a new run "
            f"name to branch from it (lineage records the branch point)")
    return info, _check_layout(info, store.load(info.id))


def _latest_good(store: Any, run: str, existing: list[CheckpointInfo]) -> tuple[CheckpointInfo | None, dict | None]:
    """The newest checkpoint that loads; damaged newer ones are reported and removed from the run, since
    the resumed run will save those (epoch, step) positions again."""
    damaged: list[CheckpointInfo] = []
    for info in reversed(existing):
        try:
            state = store.load(info.id)
        except CorruptCheckpointError as exc:
            msg = (f"checkpoint {info.short_id} ({run}@{info.epoch}, step {info.step}) is damaged ({exc}); "
                   f"resuming from an earlier one. Run `ckpt verify` to see the damage.")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            damaged.append(info)
            continue
        _check_layout(info, state)
        for bad in damaged:
            if bad.tags:
                raise InvalidArgumentError(f"damaged checkpoint {bad.short_id} is tagged {list(bad.tags)}; "
                                           f"untag or delete it before resuming run {run!r}")
            store.delete(bad.id)
        return info, state
    if damaged:
        raise CorruptCheckpointError(f"every checkpoint of run {run!r} is damaged; nothing to resume from")
    return None, None
