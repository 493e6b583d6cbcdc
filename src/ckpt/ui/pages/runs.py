"""Runs: every run with its status, objective, best value, latest epoch, checkpoints and bytes.

The table body is polled (``/fragment/runs``) every two seconds, so a run training in another process
shows its new epochs and checkpoints, and its status (a dead "running" run turns "crashed"), without a
reload. Sorting (click a header) and filtering (text, status) happen in the browser and survive polls.
"""

from __future__ import annotations

from typing import Any

from ckpt.ui.html import (age, esc, fmt_metric, human_bytes, page, run_link, sort_value, status_badge, table,
                          when)

STATUSES = ("running", "completed", "failed", "interrupted", "crashed")
HEADERS = [
    ("run", "text", ""), ("status", "text", ""), ("objective", "text", "the metric 'best' means, and its direction"),
    ("best", "num", "best value of the objective"), ("latest epoch", "num", "epoch of the newest checkpoint"),
    ("checkpoints", "num", "committed checkpoints"),
    ("held", "num", "bytes the run's checkpoints hold (what loading them all would read)"),
    ("new", "num", "bytes the run's saves wrote to storage (the rest was deduplicated)"),
    ("updated", "num", "last change of the run's status or checkpoints"),
]


def rows(app: Any) -> str:
    out = []
    runs = app.source.runs()
    runs.sort(key=lambda rt: rt[0].updated_at, reverse=True)
    for r, t in runs:
        objective = f"{r.objective} ({r.mode or 'max'})" if r.objective else "-"
        updated = r.updated_at.timestamp()
        out.append(
            f'<tr data-run="{esc(r.name)}" data-status="{esc(r.status)}">'
            f'<td class="name" data-v="{esc(r.name)}">{run_link(r.name)}</td>'
            f'<td class="status" data-v="{esc(r.status)}">{status_badge(r.status)}</td>'
            f'<td class="objective">{esc(objective)}</td>'
            f'<td class="best num" data-v="{sort_value(r.best_value)}">{esc(fmt_metric(r.best_value))}</td>'
            f'<td class="epoch num" data-v="{sort_value(t.latest_epoch)}">'
            f'{"-" if t.latest_epoch is None else t.latest_epoch}</td>'
            f'<td class="count num" data-v="{t.checkpoints}">{t.checkpoints}</td>'
            f'<td class="held num" data-v="{t.logical_size}">{esc(human_bytes(t.logical_size))}</td>'
            f'<td class="new num" data-v="{t.new_bytes}">{esc(human_bytes(t.new_bytes))}</td>'
            f'<td class="updated num" data-v="{updated:.3f}" title="{esc(when(r.updated_at))}">'
            f'{esc(age(r.updated_at))}</td></tr>')
    return "".join(out)


def fragment(app: Any, q: Any) -> str:
    return rows(app)


def render(app: Any, q: Any) -> str:
    status_opts = "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    body = f"""<h1>Runs</h1>
<div class="toolbar">
<input type="search" id="runs-filter" placeholder="filter by name, objective…" data-filter="runs-table" aria-label="filter runs">
<select id="runs-status" data-status-filter="runs-table" aria-label="status"><option value="">any status</option>{status_opts}</select>
<span class="live" data-live-indicator title="the table refreshes every 2 seconds">live</span>
</div>
{table(HEADERS, [rows(app)], id="runs-table", live="/fragment/runs", empty="no runs in this store yet")}
<p class="hint">Click a column to sort. "held": bytes the checkpoints hold; "new": bytes their saves wrote
(the rest was deduplicated). "crashed": marked running, but the process that saved it is gone.</p>"""
    return page(app.chrome(), "Runs", body, active="/")
