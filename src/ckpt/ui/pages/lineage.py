"""Lineage: the graph of checkpoints across runs (resumes, fine-tunes from a pretrain run, branches).

Drawn on the server as SVG from the lineage the view keeps in memory; every checkpoint is a link, every
run label too. ``?run=NAME`` limits the graph to the runs connected to NAME.
"""

from __future__ import annotations

from typing import Any

from ckpt.errors import CheckpointNotFoundError
from ckpt.ui import graph
from ckpt.ui.html import checkpoint_link, esc, link, page, run_link


def render(app: Any, q: Any) -> str:
    focus = q.one("run") or None
    runs = app.source.runs()
    statuses = {r.name: r.status for r, _ in runs}
    if focus is not None and focus not in statuses:
        raise CheckpointNotFoundError(f"no run named {focus!r}")
    lin = app.source.lineage()
    tags = app.tags()
    with app.source.locked():
        latest = set()
        last: dict[str, Any] = {}
        for r in lin.rows.values():
            last[r.run] = r
        latest = {r.id for r in last.values()}
        best = app.best_ids()
        g = graph.build(lin.rows, lin.children, focus=focus, marked=set(tags) | best)
        svg = graph.svg(g, statuses, best=best, tagged=tags, latest=latest) if g.lanes else ""
        edges = sorted(g.edges, key=lambda e: e.child.seq)
    rows = []
    for e in edges:
        what = "started from another run (resume under a new name, or fine-tune)" if e.kind == "cross" else \
            "branch: resumed from an earlier checkpoint of the same run"
        rows.append(f'<tr class="edge-row {e.kind}" data-from="{e.parent.id}" data-to="{e.child.id}">'
                    f'<td>{run_link(e.child.run)}@{e.child.epoch} {checkpoint_link(e.child.id)}</td>'
                    f'<td>{run_link(e.parent.run)}@{e.parent.epoch} {checkpoint_link(e.parent.id)}</td>'
                    f'<td>{esc(what)}</td></tr>')
    options = "".join(f'<option value="{esc(n)}"{" selected" if n == focus else ""}>{esc(n)}</option>'
                      for n in sorted(statuses))
    pick = (f'<form method="get" action="/lineage" class="toolbar"><label>runs connected to <select name="run">'
            f'<option value="">(all runs)</option>{options}</select></label> <button type="submit">show</button>'
            f'</form>')
    legend = ('<p class="hint">One lane per run; a dot per checkpoint (click it), "+N" for a stretch of N '
              'checkpoints with nothing else attached. Edges between lanes: a run started from another run\'s '
              'checkpoint; an arc within a lane: a branch. Rings: best (gold), tagged (blue). × : the parent '
              'was deleted.</p>')
    table = ('<table class="data" id="lineage-edges"><thead><tr><th>checkpoint</th><th>parent</th><th>what</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table>' if rows else
             '<p class="empty">no run was started from another run, and no run branched.</p>')
    title = f"Lineage of {esc(focus)} and connected runs" if focus else "Lineage"
    more = f' · {link("/lineage", "all runs")}' if focus else ""
    body = (f"<h1>{title}</h1>{pick}{legend}<div class='graph-box'>{svg or '<p class=empty>no checkpoints yet</p>'}"
            f"</div><h2>Edges between runs and branches{more}</h2>{table}")
    return page(app.chrome(), "Lineage", body, active="/lineage")
