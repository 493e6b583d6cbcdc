"""A run: its metric curves, its checkpoints, and what ``ckpt prune --dry-run`` would do to them.

The curves come from the training history the run's newest checkpoint carries (``state["history"]``,
one record per finished epoch, as ``ckpt.training.fit`` saves it), read from the manifest's skeleton
without torch: every epoch is drawn, pruned ones included, and the checkpoints still stored sit on the
curve as dots. Runs without a history are drawn from their checkpoints' metrics.

The retention plan is ckpt.retention's own plan over this run's checkpoints, with the same inputs
``store.prune(dry_run=True, run=...)`` gives it (objectives, branch points, tags); the branch points
come from the lineage the view keeps in memory, which spares a scan of every checkpoint per request.
"""

from __future__ import annotations

import math
from typing import Any

from ckpt.errors import CheckpointNotFoundError, InvalidArgumentError, MetricDirectionError
from ckpt.metrics import finite_or_nan, infer_mode, resolve_mode
from ckpt.records import CheckpointInfo
from ckpt.retention import PrunePlan, RetentionPolicy, plan
from ckpt.ui.charts import Series, line_chart
from ckpt.ui.html import (age, checkpoint_link, copy_block, esc, fmt_metric, human_bytes, link, page, run_link,
                          sort_value, status_badge, table, url, when)

MAX_ROWS = 500  # newest first; ?rows=all shows every one
MAX_DEFAULT_METRICS = 6
_SKIP_DEFAULT = {"lr", "learning_rate", "epoch_time", "time", "seconds"}


def history(app: Any, infos: list[CheckpointInfo]) -> list[dict] | None:
    """The history records of the run's newest checkpoint that has one (ordinary checkpoints first)."""
    newest = sorted(infos[-4:], key=lambda i: (i.variant != "", -infos.index(i)))
    for info in newest:
        h = app.history_of(info.id)
        if h is not None:
            return h
    return None


def history_from(structure: Any) -> list[dict] | None:
    records = structure.get("history") if isinstance(structure, dict) else None
    if not isinstance(records, list) or not records:
        return None
    ok = [r for r in records if isinstance(r, dict) and isinstance(r.get("epoch"), int)
          and not isinstance(r.get("epoch"), bool)]
    return ok or None


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def metric_names(hist: list[dict] | None, infos: list[CheckpointInfo]) -> list[str]:
    names: dict[str, None] = {}
    for r in hist or ():
        for k, v in r.items():
            if k not in ("epoch", "step") and _numeric(v):
                names[k] = None
    for i in infos:
        for k in i.metrics:
            names[k] = None
    return list(names)


def best_of(infos: list[CheckpointInfo], metric: str, mode: str) -> CheckpointInfo | None:
    """The best checkpoint by ``metric`` as the index ranks it: finite values only, earliest on ties."""
    scored = [i for i in infos if math.isfinite(i.metrics.get(metric, math.nan))]
    if not scored:
        return None
    pick = max if mode == "max" else min  # both return the first of equals: the earliest checkpoint
    return pick(scored, key=lambda i: i.metrics[metric])


def _mode(metric: str, objective: str | None, declared: str | None) -> str | None:
    if metric == objective:
        return resolve_mode(metric, declared)
    return infer_mode(metric)


def chart(infos: list[CheckpointInfo], hist: list[dict] | None, metrics: list[str], objective: str | None,
          declared: str | None) -> tuple[str, str]:
    """(svg, where the curves come from)."""
    low = [m for m in metrics if infer_mode(m) == "min"]
    twin = bool(low) and len(low) < len(metrics)
    series = []
    from_history = 0
    for m in metrics:
        s = Series(m, [], [], axis="left" if (not twin or m in low) else "right")
        rows = [r for r in hist or () if m in r]
        if rows:
            from_history += 1
            rows.sort(key=lambda r: r["epoch"])
            s.x = [float(r["epoch"]) for r in rows]
            s.y = [finite_or_nan(r[m]) for r in rows]
        else:
            pts = sorted((i.epoch, i.metrics[m]) for i in infos if m in i.metrics)
            s.x, s.y = [float(p[0]) for p in pts], [finite_or_nan(p[1]) for p in pts]
        s.points = [(float(i.epoch), finite_or_nan(i.metrics[m]), i.id, f"{i.run}@{i.epoch}: {m} = {fmt_metric(i.metrics[m])}")
                    for i in infos if m in i.metrics]
        mode = _mode(m, objective, declared)
        if mode is not None:
            b = best_of(infos, m, mode)
            if b is not None:
                s.best = (float(b.epoch), b.metrics[m], b.id, f"best {m} = {fmt_metric(b.metrics[m])} at epoch "
                          f"{b.epoch} ({b.id[:12]})")
        if s.x:
            series.append(s)
    source = ("every epoch from the training history (pruned epochs included; dots: checkpoints still stored)"
              if from_history == len(series) and series else
              "from the training history where it has the metric, else from the checkpoints" if from_history
              else "from the checkpoints' metrics")
    return line_chart(series), source


def _int(q: Any, name: str) -> int | None:
    v = q.one(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a whole number, not {v[:20]!r}") from None


def retention(app: Any, run: str, infos: list[CheckpointInfo], q: Any) -> tuple[PrunePlan | None, str, dict]:
    """(plan or None, message, the policy's fields)."""
    asked = any(q.one(k) is not None for k in ("keep_last", "keep_best", "keep_every", "metric"))
    fields = {"keep_last": _int(q, "keep_last") if asked else 3, "keep_best": _int(q, "keep_best"),
              "keep_every": _int(q, "keep_every"), "metric": q.one("metric") or None}
    try:
        policy = RetentionPolicy(fields["keep_last"], fields["keep_best"], fields["keep_every"], fields["metric"])
        if not infos:
            return None, "", fields
        objectives = app.source.store.catalog.objectives()
        branch = app.source.branch_points([i.id for i in infos])
        result = plan({run: infos}, {run: objectives.get(run, (None, None))}, policy, branch)
        result.bytes_freed = sum(app.source.store.catalog.exclusive_packs([i.id for i in result.remove]).values())
        return result, "", fields
    except (InvalidArgumentError, MetricDirectionError) as exc:
        return None, str(exc), fields


def _prune_command(run: str, fields: dict) -> str:
    parts = ["ckpt", "prune", "--run", _shell(run)]
    if fields["keep_last"] is not None:
        parts += ["--keep-last", str(fields["keep_last"])]
    if fields["keep_best"] is not None:
        parts += ["--keep-best", str(fields["keep_best"]) + (f":{_shell(fields['metric'])}" if fields["metric"] else "")]
    if fields["keep_every"] is not None:
        parts += ["--keep-every", str(fields["keep_every"])]
    return " ".join(parts + ["--dry-run"])


def _shell(s: str) -> str:
    import shlex
    return shlex.quote(s)


def section(app: Any, q: Any) -> str:
    """Everything on the run page that changes while the run trains (polled as a fragment)."""
    name = q.one("name")
    if not name:
        raise InvalidArgumentError("which run? /run?name=RUN")
    runs = {r.name: (r, t) for r, t in app.source.runs()}
    if name not in runs:
        raise CheckpointNotFoundError(f"no run named {name!r}")
    r, totals = runs[name]
    infos = app.source.run_checkpoints(name)
    hist = history(app, infos)
    available = metric_names(hist, infos)
    chosen = [m for m in q.all("m") if m in available] or \
        [m for m in available if m not in _SKIP_DEFAULT][:MAX_DEFAULT_METRICS] or available[:MAX_DEFAULT_METRICS]
    svg, source = chart(infos, hist, chosen, r.objective, r.mode)
    best = None
    if r.objective:
        best = best_of(infos, r.objective, resolve_mode(r.objective, r.mode))
    result, problem, fields = retention(app, name, infos, q)
    lin = app.source.lineage()
    with app.source.locked():
        first = infos[0] if infos else None
        origin = lin.rows.get(first.parent) if first is not None and first.parent else None
        origin_missing = first is not None and first.parent is not None and origin is None
        branches = []
        for i in infos:
            for child in lin.children.get(i.id, ()):
                c = lin.rows.get(child)
                if c is not None and c.run != name:
                    branches.append((i, c))
    facts = [("status", status_badge(r.status)),
             ("objective", esc(f"{r.objective} ({r.mode or 'max'})") if r.objective else "-"),
             ("best", (f'{esc(fmt_metric(r.best_value))} at {checkpoint_link(best.id, f"epoch {best.epoch}")}'
                       if best is not None else esc(fmt_metric(r.best_value)))),
             ("checkpoints", f'<span class="count">{totals.checkpoints}</span>'),
             ("latest epoch", f'<span class="latest-epoch">{"-" if totals.latest_epoch is None else totals.latest_epoch}</span>'),
             ("held / new", f"{esc(human_bytes(totals.logical_size))} / {esc(human_bytes(totals.new_bytes))}"),
             ("updated", f'<span title="{esc(when(r.updated_at))}">{esc(age(r.updated_at))}</span>'
                         + (f" · host {esc(r.host)} pid {r.pid}" if r.host else ""))]
    if origin is not None:
        facts.append(("started from", f'{run_link(origin.run)}@{origin.epoch} '
                                      f'({checkpoint_link(origin.id)}): resumed or fine-tuned from another run'))
    elif origin_missing:  # pruned earlier checkpoints of this run, or a deleted checkpoint it started from
        facts.append(("before", f"its oldest checkpoint's parent {esc(first.parent[:12])} was deleted"))
    if branches:
        facts.append(("branched into", ", ".join(
            f'{run_link(c.run)} from epoch {i.epoch} ({checkpoint_link(i.id)})' for i, c in branches[:20])
            + (f" and {len(branches) - 20} more" if len(branches) > 20 else "")))
    facts.append(("lineage", link("/lineage", "graph of this run and the runs it connects to", run=name)))
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    # metric picker (GET: the page's own state is its URL)
    keep = "".join(f'<input type="hidden" name="{k}" value="{esc("" if v is None else v)}">'
                   for k, v in fields.items())
    boxes = "".join(f'<label><input type="checkbox" name="m" value="{esc(m)}"{" checked" if m in chosen else ""}>'
                    f' {esc(m)}</label>' for m in available)
    picker = (f'<form method="get" action="/run" class="metric-picker"><input type="hidden" name="name" '
              f'value="{esc(name)}">{keep}{boxes} <button type="submit">show</button></form>') if available else ""
    chart_html = (f'<figure class="chart-box">{svg}<figcaption>{esc(source)}</figcaption></figure>' if svg else
                  '<p class="empty">no metrics to draw yet</p>')
    # retention form
    inputs = "".join(
        f'<label>{esc(label)} <input type="{typ}" name="{k}" value="{esc("" if fields[k] is None else fields[k])}"'
        f'{" min=0" if typ == "number" else ""} size="6"></label>'
        for k, label, typ in (("keep_last", "keep last", "number"), ("keep_best", "keep best", "number"),
                              ("keep_every", "keep every", "number"), ("metric", "by metric", "text")))
    chosen_hidden = "".join(f'<input type="hidden" name="m" value="{esc(m)}">' for m in q.all("m"))
    plan_form = (f'<form method="get" action="/run" class="plan-form"><input type="hidden" name="name" '
                 f'value="{esc(name)}">{chosen_hidden}{inputs} <button type="submit">plan</button></form>')
    if result is not None:
        plan_note = (f'<p class="plan-summary">Retention plan (dry run): keep <b>{len(result.keep)}</b>, remove '
                     f'<b>{len(result.remove)}</b>, freeing about <b>{esc(human_bytes(result.bytes_freed))}</b>. '
                     f'Tagged checkpoints, the latest, the best and branch points are always kept.</p>'
                     + copy_block(_prune_command(name, fields), "the same plan from the command line"))
    else:
        plan_note = f'<p class="plan-summary error">{esc(problem)}</p>' if problem else ""
    # checkpoints table
    metric_cols = list(dict.fromkeys(m for i in infos for m in i.metrics))
    headers = [("", "", "pick two to compare"), ("id", "text", ""), ("epoch", "num", ""), ("step", "num", "")]
    headers += [(m, "num", "") for m in metric_cols]
    headers += [("tags", "text", ""), ("size", "num", "bytes of tensors it holds"),
                ("new", "num", "bytes this save wrote (the rest was deduplicated)"), ("age", "num", ""),
                ("retention plan", "text", "what prune with the policy above would do")]
    reasons = result.reasons if result else {}
    removed = result.removed_reasons if result else {}
    rows = []
    shown = infos[::-1] if q.one("rows") == "all" else infos[::-1][:MAX_ROWS]
    for i in shown:
        if i.id in reasons:
            plan_cell = f'<td class="plan keep" data-v="keep">keep: {esc(", ".join(reasons[i.id]))}</td>'
            cls = "plan-keep"
        elif i.id in removed:
            plan_cell = f'<td class="plan remove" data-v="remove">remove: {esc(removed[i.id])}</td>'
            cls = "plan-remove"
        else:
            plan_cell, cls = '<td class="plan"></td>', ""
        star = ' <span class="star" title="best checkpoint">★</span>' if best is not None and i.id == best.id else ""
        cells = "".join(f'<td class="num metric" data-v="{sort_value(i.metrics.get(m))}">'
                        f'{esc(fmt_metric(i.metrics.get(m)))}</td>' for m in metric_cols)
        tags = " ".join(f'<span class="tag">{esc(t)}</span>' for t in i.tags)
        variant = f' <span class="variant">{esc(i.variant)}</span>' if i.variant else ""
        rows.append(
            f'<tr data-id="{i.id}" data-epoch="{i.epoch}" class="{cls}">'
            f'<td><input type="checkbox" class="pick" value="{i.id}" aria-label="pick {i.id[:12]}"></td>'
            f'<td class="id" data-v="{i.id}">{checkpoint_link(i.id)}{star}{variant}</td>'
            f'<td class="epoch num" data-v="{i.epoch}">{i.epoch}</td>'
            f'<td class="step num" data-v="{sort_value(i.step)}">{"-" if i.step is None else i.step}</td>{cells}'
            f'<td class="tags" data-v="{esc(" ".join(i.tags))}">{tags}</td>'
            f'<td class="num" data-v="{i.logical_size}">{esc(human_bytes(i.logical_size))}</td>'
            f'<td class="num" data-v="{i.new_bytes}">{esc(human_bytes(i.new_bytes))}</td>'
            f'<td class="num" data-v="{i.created_at.timestamp():.3f}" title="{esc(when(i.created_at))}">'
            f'{esc(age(i.created_at))}</td>{plan_cell}</tr>')
    more = (f'<p class="hint">showing the newest {len(shown)} of {len(infos)} checkpoints (the plan above covers '
            f'all): {link("/run", "show all", None, **{**q.as_dict(), "rows": "all"})}</p>'
            if len(shown) < len(infos) else "")
    compare = ('<div class="toolbar"><button type="button" id="compare-picked" disabled>diff the two picked</button>'
               '<input type="search" placeholder="filter checkpoints…" data-filter="checkpoints-table" '
               'aria-label="filter checkpoints"></div>')
    return (f'<dl class="facts">{dl}</dl><section><h2>Metrics</h2>{picker}{chart_html}</section>'
            f'<section><h2>Checkpoints</h2>{plan_form}{plan_note}{compare}'
            f'{table(headers, rows, id="checkpoints-table", empty="no checkpoints yet")}{more}</section>')


def fragment(app: Any, q: Any) -> str:
    return section(app, q)


def render(app: Any, q: Any) -> str:
    name = q.one("name") or ""
    live = url("/fragment/run", **{k: v for k, v in q.as_dict().items() if k not in ("done", "arg")})
    body = (f'<h1>Run <span class="run-title">{esc(name)}</span> <span class="live" data-live-indicator>live</span></h1>'
            f'<div id="run-live" data-live="{esc(live)}" data-interval="3000">{section(app, q)}</div>')
    return page(app.chrome(), f"run {name}", body, notice=app.notice(q))
