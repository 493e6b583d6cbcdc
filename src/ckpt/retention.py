"""Retention: which checkpoints to keep (last N, best K, every N-th epoch), and what removing the rest frees.

Step checkpoints that their epoch's end checkpoint has superseded go first and count toward no policy.
Never removed, whatever the policy: tagged checkpoints, each run's latest (so nothing goes before a newer
checkpoint is committed, and a resume always has its checkpoint), each run's best by the policy's metric
(or the run's objective), and branch points: a checkpoint another run was resumed or fine-tuned from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ckpt.errors import InvalidArgumentError, MetricDirectionError
from ckpt.metrics import check_mode, infer_mode, resolve_mode
from ckpt.records import CheckpointInfo


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    keep_best: int | None = None
    keep_every: int | None = None
    metric: str | None = None  # for keep_best; default: each run's declared objective
    mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_best", "keep_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "keep_every" else 0)):
                raise InvalidArgumentError(f"{name} must be a non-negative integer (keep_every >= 1), got {v!r}")
        if self.keep_last is None and self.keep_best is None and self.keep_every is None:
            raise InvalidArgumentError("a retention policy needs at least one of keep_last, keep_best, keep_every")
        if self.mode is not None:
            check_mode(self.mode)


@dataclass
class PrunePlan:
    keep: list[CheckpointInfo] = field(default_factory=list)
    remove: list[CheckpointInfo] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # kept id -> why
    bytes_freed: int = 0
    dry_run: bool = True
    removed_reasons: dict[str, str] = field(default_factory=dict)  # removed id -> why it goes


def _best(infos: list[CheckpointInfo], metric: str, mode: str, k: int) -> list[CheckpointInfo]:
    scored = [i for i in infos if (v := i.metrics.get(metric)) is not None and v == v and abs(v) != float("inf")]
    scored.sort(key=lambda i: (-i.metrics[metric] if mode == "max" else i.metrics[metric], i.created_at))
    return scored[:k]


_END = float("inf")  # where a checkpoint without a step sits in its epoch: at the end


def _pos(info: CheckpointInfo) -> float:
    return _END if info.step is None else info.step


def _by(info: CheckpointInfo) -> str:
    """How the superseding checkpoint is named in a reason (same run, same epoch)."""
    return "the epoch's end" if info.step is None else f"step {info.step}"


def superseded(infos: list[CheckpointInfo]) -> dict[str, CheckpointInfo]:
    """Step checkpoints of one run that a later checkpoint of the same epoch makes redundant, each with
    the checkpoint that supersedes it.

    A step checkpoint X (``step`` set) is superseded by a later checkpoint Y of the same epoch when
      * Y has no step (an epoch-end checkpoint), or
      * X has no metrics (a mid-epoch resume point, as ``fit(save_every_steps=...)`` writes) and
        - Y has metrics (the evaluated epoch-end checkpoint), or
        - the run marks its epoch ends (some checkpoint has metrics or no step) and Y is a newer resume
          point, or
        - the run has reached a later epoch and Y is the last checkpoint of X's epoch.
    Evaluated step checkpoints (a Trainer saving with eval metrics every N steps) never supersede each
    other: each one is a result, not a resume point. The one kept for an epoch is its last checkpoint.
    """
    marks_ends = any(i.step is None or i.metrics for i in infos)
    by_epoch: dict[int, list[CheckpointInfo]] = defaultdict(list)
    for i in infos:
        by_epoch[i.epoch].append(i)
    last_epoch = max(by_epoch) if by_epoch else None
    out: dict[str, CheckpointInfo] = {}
    for epoch, group in by_epoch.items():
        group = sorted(group, key=_pos)
        last = group[-1]
        for n, x in enumerate(group):
            if x.step is None:
                continue
            later = [y for y in group[n + 1:] if _pos(y) > _pos(x)]
            if not later:
                continue
            end = next((y for y in later if y.step is None), None)
            if end is None and not x.metrics:
                end = next((y for y in later if y.metrics), None)
                if end is None and (marks_ends or epoch != last_epoch):
                    end = last
            if end is not None:
                out[x.id] = end
    return out


def plan(infos_by_run: dict[str, list[CheckpointInfo]], objectives: dict[str, tuple[str | None, str | None]],
         policy: RetentionPolicy, branch_points: dict[str, str]) -> PrunePlan:
    """Decide per run; ``infos_by_run`` lists each run's committed checkpoints oldest first, and
    ``branch_points`` maps a checkpoint id to a run that was resumed or fine-tuned from it.

    Step checkpoints superseded by their epoch's end (see :func:`superseded`) go first: they count
    toward neither keep_last nor keep_every, and stay only when tagged, a branch point, a run's latest or
    best. The newest resume point of an epoch still in progress (no metrics, in a run that marks its epoch
    ends) does not count toward keep_last either: keep_last=3 keeps three epochs, whatever the
    step-checkpoint frequency.
    """
    result = PrunePlan()
    why: dict[str, list[str]] = defaultdict(list)
    gone: dict[str, str] = {}
    for cid, child_run in branch_points.items():
        why[cid].append(f"branch point of run {child_run!r}")
    for run, infos in infos_by_run.items():
        if not infos:
            continue
        why[infos[-1].id].append("latest")
        for i in infos:
            if i.tags:
                why[i.id].append("tagged " + ",".join(i.tags))
        replaced = superseded(infos)
        marks_ends = any(i.step is None or i.metrics for i in infos)
        in_progress = {i.id for i in infos if i.id not in replaced and marks_ends and i.step is not None
                       and not i.metrics}
        counted = [i for i in infos if i.id not in replaced and i.id not in in_progress]
        for i in infos:
            if i.id in replaced:
                gone[i.id] = f"superseded by {_by(replaced[i.id])}"
            elif i.id in in_progress:
                gone[i.id] = "resume point of an unfinished epoch"
        if policy.keep_last:
            for i in counted[-policy.keep_last:]:
                why[i.id].append(f"last {policy.keep_last}")
            for i in counted[:-policy.keep_last]:
                gone.setdefault(i.id, f"not in last {policy.keep_last}")
        if policy.keep_every:
            for i in counted:
                if i.epoch % policy.keep_every == 0:
                    why[i.id].append(f"every {policy.keep_every}")
        metric, declared = policy.metric, policy.mode
        if metric is None:
            metric, declared = objectives.get(run, (None, None))
        if metric is not None:
            mode = resolve_mode(metric, policy.mode or declared)
            for n, i in enumerate(_best(infos, metric, mode, max(policy.keep_best or 0, 1))):
                why[i.id].append(f"best by {metric}" if n == 0 else f"best {policy.keep_best} by {metric}")
        else:
            # No objective: "the best" is kept for every metric whose direction is known.
            names = list(dict.fromkeys(m for i in infos for m in i.metrics))
            known = [(m, mode) for m in names if (mode := infer_mode(m)) is not None]
            if policy.keep_best and len(known) != 1:
                raise MetricDirectionError(
                    f"keep_best needs a metric: run {run!r} declares no objective and has metrics {names}; "
                    f"pass metric= (CLI: --keep-best K:METRIC) or declare one with store.set_objective(...) "
                    f"(CLI: ckpt objective RUN METRIC)")
            for m, mode in known:
                for n, i in enumerate(_best(infos, m, mode, max(policy.keep_best or 0, 1))):
                    why[i.id].append(f"best by {m}" if n == 0 else f"best {policy.keep_best} by {m}")
        for i in infos:
            (result.keep if why.get(i.id) else result.remove).append(i)
    kept = {i.id for i in result.keep}
    result.reasons = {k: v for k, v in why.items() if k in kept}
    result.removed_reasons = {i.id: gone.get(i.id, "no rule keeps it") for i in result.remove}
    return result
