"""One selector grammar for the API and the CLI.

    latest | best | best:METRIC            newest committed / best by the run's objective / by METRIC
    RUN@EPOCH                              that run's checkpoint for that epoch (the last step of it)
    RUN:latest | RUN:best | RUN:best:M     the same, within one run
    TAG                                    a tag name
    ID-PREFIX                              at least 6 hex characters of a checkpoint id
    RUN                                    a bare run name means RUN:latest
    SELECTOR~N                             N committed checkpoints earlier in the same lineage

Resolution order for a bare word: keywords, tags, id prefixes, run names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ckpt import validation
from ckpt.errors import (AmbiguousSelectorError, CheckpointNotFoundError, InvalidArgumentError,
                         MetricDirectionError, SelectorError)
from ckpt.catalog.schema import Checkpoint, Metric, Run, Tag
from ckpt.metrics import check_mode, infer_mode, resolve_mode
from ckpt.validation import describe

_HEX = re.compile(r"^[0-9a-f]{6,32}$")
_TILDE = re.compile(r"^(.*)~(\d+)$")
_INT = re.compile(r"\s*[+-]?\d+(?:_\d+)*\s*")  # what int() accepts
MAX_CANDIDATES = 50


@dataclass(frozen=True)
class Parsed:
    kind: str  # latest | best | epoch | word
    run: str | None = None
    metric: str | None = None
    epoch: int | None = None
    word: str | None = None
    back: int = 0

    @property
    def falls_back(self) -> bool:
        """Whether a damaged match may be skipped for the next candidate (latest/best forms)."""
        return self.kind in ("latest", "best") and self.back == 0


def parse(selector: str) -> Parsed:
    if not isinstance(selector, str) or not selector.strip():
        raise SelectorError(f"a selector must be a non-empty string, got {selector!r}; try 'latest', "
                            f"'best:val_acc', 'RUN@EPOCH', a tag or an id prefix")
    validation.utf8("selector", selector, SelectorError)
    sel = selector.strip()
    back = 0
    m = _TILDE.match(sel)
    if m:
        sel, back = m.group(1), _in_range(selector, "the ~N count", m.group(2))
        if not sel:
            raise SelectorError(f"{selector!r}: '~N' needs a selector before it, e.g. 'latest~1'")
    if sel == "latest":
        return Parsed("latest", back=back)
    if sel == "best":
        return Parsed("best", back=back)
    if sel.startswith("best:") and len(sel) > 5:
        return Parsed("best", metric=sel[5:], back=back)
    if sel.endswith(":latest") and len(sel) > 7:
        return Parsed("latest", run=sel[:-7], back=back)
    if sel.endswith(":best") and len(sel) > 5:
        return Parsed("best", run=sel[:-5], back=back)
    if ":best:" in sel:
        run, metric = sel.rsplit(":best:", 1)
        if run and metric:
            return Parsed("best", run=run, metric=metric, back=back)
    if "@" in sel:
        run, epoch = sel.rsplit("@", 1)
        if _INT.fullmatch(epoch):
            return Parsed("epoch", run=run, epoch=_in_range(selector, "epoch", epoch), back=back)
        if run:
            raise SelectorError(f"{selector!r}: the part after '@' must be an epoch number, e.g. "
                                f"'{run}@3'")
    return Parsed("word", word=sel, back=back)


def _in_range(selector: str, kind: str, text: str) -> int:
    """An integer of a selector, in validation's one range (0..2**62-1), or a SelectorError."""
    try:
        return validation.parse_integer(kind, text)
    except InvalidArgumentError as exc:
        raise SelectorError(f"{describe(selector, 60)}: {exc}") from None


class Resolver:
    """Turns a parsed selector into committed checkpoint rows, using the index only."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def _committed(self):  # type: ignore[no-untyped-def]
        return select(Checkpoint).where(Checkpoint.status == "committed")

    def run_row(self, name: str) -> Run:
        run = self.s.scalar(select(Run).where(Run.name == name))
        if run is None:
            names = self.s.scalars(select(Run.name).order_by(Run.name).limit(20)).all()
            raise CheckpointNotFoundError(f"no run named {name!r}; runs in this store: "
                                          f"{', '.join(map(repr, names)) or 'none'}")
        return run

    def candidates(self, p: Parsed, run: str | None = None, mode: str | None = None,
                   limit: int = MAX_CANDIDATES) -> list[Checkpoint]:
        """Matching checkpoints, best first (at most ``limit``); more than one only for latest/best forms."""
        run = p.run or run
        if p.kind == "latest":
            q = self._committed()
            if run is not None:
                q = q.where(Checkpoint.run_id == self.run_row(run).id)
            rows = list(self.s.scalars(q.order_by(Checkpoint.seq.desc()).limit(max(limit, 16))))
            if not rows:
                raise CheckpointNotFoundError(
                    "the store has no committed checkpoint" + (f" for run {run!r}" if run else "") +
                    "; save one with store.save(run, epoch, state)")
            return _ordinary_first(rows)[:limit]
        if p.kind == "best":
            return self.best(p.metric, mode=mode, run=run, limit=limit)
        if p.kind == "epoch":
            q = self._committed().where(Checkpoint.run_id == self.run_row(p.run).id,  # type: ignore[arg-type]
                                        Checkpoint.epoch == p.epoch)
            row = self.s.scalars(q.order_by(Checkpoint.step_key.desc(), (Checkpoint.variant != "").asc(),
                                            Checkpoint.seq.desc()).limit(1)).first()
            if row is None:
                epochs = sorted(set(self.s.scalars(select(Checkpoint.epoch).where(
                    Checkpoint.run_id == self.run_row(p.run).id, Checkpoint.status == "committed"))))  # type: ignore[arg-type]
                raise CheckpointNotFoundError(f"run {p.run!r} has no committed checkpoint for epoch {p.epoch}; "
                                              f"it has epochs {epochs or 'none'}")
            return [row]
        return [self.word(p.word)]  # type: ignore[arg-type]

    def word(self, word: str) -> Checkpoint:
        tag = self.s.get(Tag, word)
        if tag is not None:
            row = self.s.get(Checkpoint, tag.checkpoint_id)
            if row is not None and row.status == "committed":
                return row
        low = word.lower()
        if _HEX.match(low):
            rows = list(self.s.scalars(self._committed().where(Checkpoint.id.startswith(low))
                                       .order_by(Checkpoint.seq).limit(MAX_CANDIDATES)))
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                ids = [f"{r.id[:12]} ({r.run.name}@{r.epoch})" for r in rows]
                raise AmbiguousSelectorError(f"id prefix {word!r} matches {len(rows)} checkpoints: "
                                             f"{', '.join(ids)}; give more characters", [r.id for r in rows])
        run = self.s.scalar(select(Run).where(Run.name == word))
        if run is not None:
            row = self.s.scalars(self._committed().where(Checkpoint.run_id == run.id)
                                 .order_by(Checkpoint.seq.desc()).limit(1)).first()
            if row is not None:
                return row
        hint = " (id prefixes need at least 6 hex characters)" if re.fullmatch(r"[0-9a-fA-F]{1,5}", word) else ""
        raise CheckpointNotFoundError(f"no checkpoint matches {word!r}{hint}: it is not a tag, id prefix or "
                                      f"run name. Selectors: latest, best, best:METRIC, RUN@EPOCH, "
                                      f"RUN:latest, RUN:best:METRIC, TAG, ID-PREFIX, with an optional ~N")

    def objective(self, run: str | None) -> tuple[str, str, list[int] | None]:
        """The metric and mode 'best' means, and the run ids it applies to (None: all runs).

        The declared objective; else the only metric the checkpoints in scope have, when its direction
        can be inferred from its name; else an error naming the metrics there are and what to type.
        """
        if run is not None:
            r = self.run_row(run)
            if r.objective_metric:
                return r.objective_metric, r.objective_mode or "max", [r.id]
            return (*self._only_metric([r.id], run), [r.id])
        declared = {(r.objective_metric, r.objective_mode) for r in
                    self.s.scalars(select(Run).where(Run.objective_metric.is_not(None)))}
        if len(declared) == 1:
            metric, mode = declared.pop()
            return metric, mode or "max", None  # type: ignore[return-value]
        if declared:
            raise SelectorError(f"runs declare different objectives ({sorted(declared)}); say 'RUN:best' or "
                                f"'best:METRIC'")
        return (*self._only_metric(None, None), None)

    def _only_metric(self, run_ids: list[int] | None, run: str | None) -> tuple[str, str]:
        q = select(Metric.name).join(Checkpoint, Checkpoint.id == Metric.checkpoint_id) \
            .where(Checkpoint.status == "committed").distinct().limit(50)
        if run_ids is not None:
            q = q.where(Checkpoint.run_id.in_(run_ids))
        names = sorted(self.s.scalars(q))
        where = f"run {run!r}" if run else "this store"
        example = f"ckpt objective {run or 'RUN'} METRIC --max|--min (Python: store.set_objective(...))"
        if not names:
            raise MetricDirectionError(f"'best' needs a metric, but no checkpoint of {where} has one; save metrics "
                                       f"with the checkpoint (store.save(run, epoch, state, {{'val_acc': ...}}))")
        if len(names) == 1:
            mode = infer_mode(names[0])
            if mode is not None:
                return names[0], mode
            raise MetricDirectionError(
                f"'best' needs a direction for {names[0]!r} (the only metric of {where}): say "
                f"'best:{names[0]}' with mode, or declare it: ckpt objective {run or 'RUN'} {names[0]} --max "
                f"(or --min)")
        shown = ", ".join(f"{n} ({'higher' if infer_mode(n) == 'max' else 'lower' if infer_mode(n) else 'unknown'}"
                          f" is better)" for n in names[:10])
        raise MetricDirectionError(
            f"'best' is ambiguous: {where} has metrics {shown}; say which one, e.g. 'best:{names[0]}', or "
            f"declare an objective: {example}")

    def declared_mode(self, metric: str) -> str | None:
        modes = set(self.s.scalars(select(Run.objective_mode).where(Run.objective_metric == metric)))
        modes.discard(None)
        return modes.pop() if len(modes) == 1 else None

    def best(self, metric: str | None, *, mode: str | None = None, run: str | None = None,
             limit: int = MAX_CANDIDATES) -> list[Checkpoint]:
        run_ids: list[int] | None = None
        if metric is None:
            metric, declared, run_ids = self.objective(run)
            mode = mode or declared
        elif run is not None:
            r = self.run_row(run)
            run_ids = [r.id]
            if mode is None and r.objective_metric == metric:
                mode = r.objective_mode
        if mode is None:
            mode = self.declared_mode(metric)
        mode = check_mode(resolve_mode(metric, mode))
        order = Metric.value.desc() if mode == "max" else Metric.value.asc()
        q = (self._committed().join(Metric, Metric.checkpoint_id == Checkpoint.id)
             .where(Metric.name == metric, Metric.value.is_not(None)))
        if run_ids is not None:
            q = q.where(Checkpoint.run_id.in_(run_ids))
        rows = list(self.s.scalars(q.order_by(order, Checkpoint.seq.asc()).limit(limit)))
        if not rows:
            raise CheckpointNotFoundError(f"no committed checkpoint has a finite value for metric {metric!r}"
                                          + (f" in run {run!r}" if run else ""))
        return rows

    def walk_back(self, row: Checkpoint, n: int, selector: str) -> Checkpoint:
        for i in range(n):
            if row.parent_id is None:
                raise CheckpointNotFoundError(f"{selector!r}: lineage ends after {i} step(s) at "
                                              f"{row.id[:12]} ({row.run.name}@{row.epoch})")
            parent = self.s.get(Checkpoint, row.parent_id)
            if parent is None or parent.status != "committed":
                raise CheckpointNotFoundError(f"{selector!r}: parent {row.parent_id[:12]} of {row.id[:12]} "
                                              f"was deleted; lineage is broken there")
            row = parent
        return row


def _ordinary_first(rows: list[Checkpoint]) -> list[Checkpoint]:
    """Among checkpoints at one (run, epoch, step), the ordinary one (variant "") before its variants (a
    weights-only copy saved after it): "latest" means the checkpoint to resume from."""
    ordinary = {(r.run_id, r.epoch, r.step_key) for r in rows if not r.variant}
    return sorted(rows, key=lambda r: 1 if r.variant and (r.run_id, r.epoch, r.step_key) in ordinary else 0)


def resolve(session: Session, selector: str, *, run: str | None = None, mode: str | None = None,
            limit: int = MAX_CANDIDATES) -> list[Checkpoint]:
    """All checkpoints a selector may mean, preferred first (a single one unless it can fall back)."""
    if run is not None and (not isinstance(run, str) or not run):
        raise InvalidArgumentError(f"run must be a non-empty string, got {run!r}")
    p = parse(selector)
    r = Resolver(session)
    rows = r.candidates(p, run=run, mode=mode, limit=1 if p.back else limit)
    if p.back:
        return [r.walk_back(rows[0], p.back, selector)]
    return rows if p.falls_back else rows[:1]
