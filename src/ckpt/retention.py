"""Retention: which checkpoints to keep (last N, best K, every N-th epoch), and what removing the rest frees.

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


def _best(infos: list[CheckpointInfo], metric: str, mode: str, k: int) -> list[CheckpointInfo]:
    scored = [i for i in infos if (v := i.metrics.get(metric)) is not None and v == v and abs(v) != float("inf")]
    scored.sort(key=lambda i: (-i.metrics[metric] if mode == "max" else i.metrics[metric], i.created_at))
    return scored[:k]


def plan(infos_by_run: dict[str, list[CheckpointInfo]], objectives: dict[str, tuple[str | None, str | None]],
         policy: RetentionPolicy, branch_points: dict[str, str]) -> PrunePlan:
    """Decide per run; ``infos_by_run`` lists each run's committed checkpoints oldest first, and
    ``branch_points`` maps a checkpoint id to a run that was resumed or fine-tuned from it."""
    result = PrunePlan()
    why: dict[str, list[str]] = defaultdict(list)
    for cid, child_run in branch_points.items():
        why[cid].append(f"branch point of run {child_run!r}")
    for run, infos in infos_by_run.items():
        if not infos:
            continue
        why[infos[-1].id].append("latest")
        for i in infos:
            if i.tags:
                why[i.id].append("tagged " + ",".join(i.tags))
        if policy.keep_last:
            for i in infos[-policy.keep_last:]:
                why[i.id].append(f"last {policy.keep_last}")
        if policy.keep_every:
            for i in infos:
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
                    f"pass metric= (CLI: --keep-best K:METRIC) or declare one with store.set_objective(...)")
            for m, mode in known:
                for n, i in enumerate(_best(infos, m, mode, max(policy.keep_best or 0, 1))):
                    why[i.id].append(f"best by {m}" if n == 0 else f"best {policy.keep_best} by {m}")
        for i in infos:
            (result.keep if why.get(i.id) else result.remove).append(i)
    result.reasons = {k: v for k, v in why.items() if k in {i.id for i in result.keep}}
    return result
