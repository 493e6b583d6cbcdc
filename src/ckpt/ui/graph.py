"""The lineage graph as SVG: one lane per run, checkpoints as clickable dots, parents as edges.

Each checkpoint has at most one parent, so the graph is a forest. A run resumed under another name or
fine-tuned from a pretrain run starts with an edge from the other run's checkpoint; a run resumed from
one of its own earlier checkpoints branches with an arc inside its lane. Long straight stretches are
folded into "+N" boxes (linking to the run) so that a store of 100,000 checkpoints stays drawable: a
checkpoint is always drawn when it is a run's first or last, a root, a branch point, the start of a
branch, tagged, or best.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ckpt.ui.html import esc, safe, url

FULL = 12  # runs with at most this many checkpoints are drawn whole
DX, DY, LABEL_W, TOP = 46, 54, 190, 28


@dataclass
class Node:
    row: Any  # source.Row
    col: int = 0
    kind: str = "node"  # "node" | "gap"
    hidden: list[Any] = field(default_factory=list)  # the rows a gap stands for


@dataclass
class Edge:
    parent: Any
    child: Any
    kind: str  # "cross" (another run) | "branch" (same run, not the previous checkpoint)


@dataclass
class Graph:
    lanes: list[str]
    nodes: dict[str, list[Node]]
    edges: list[Edge]
    missing_parent: set[str]
    columns: int


def _components(rows: dict[str, Any], children: dict[str, list[str]]) -> dict[str, set[str]]:
    """Run -> the runs connected to it through cross-run parent edges (itself included)."""
    links: dict[str, set[str]] = defaultdict(set)
    for r in rows.values():
        p = rows.get(r.parent) if r.parent else None
        if p is not None and p.run != r.run:
            links[r.run].add(p.run)
            links[p.run].add(r.run)
    out: dict[str, set[str]] = {}
    for start in {r.run for r in rows.values()}:
        if start in out:
            continue
        seen, todo = {start}, [start]
        while todo:
            for nxt in links[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        for run in seen:
            out[run] = seen
    return out


def build(rows: dict[str, Any], children: dict[str, list[str]], *, focus: str | None = None,
          marked: set[str] = frozenset(), full: int = FULL) -> Graph:
    """Lay out the lineage of every run (or of the runs connected to ``focus``)."""
    runs_rows: dict[str, list[Any]] = defaultdict(list)
    if focus is not None:
        wanted = _components(rows, children).get(focus, {focus})
    for r in rows.values():  # commit order
        if focus is None or r.run in wanted:
            runs_rows[r.run].append(r)
    important: set[str] = set(marked)
    edges: list[Edge] = []
    missing: set[str] = set()
    for run, rs in runs_rows.items():
        prev = None
        for r in rs:
            p = rows.get(r.parent) if r.parent else None
            if r.parent and p is None:
                missing.add(r.id)
                important.add(r.id)
            if p is None:
                important.add(r.id)
            elif p.run != run:
                important.update((r.id, p.id))
                edges.append(Edge(p, r, "cross"))
            elif prev is None or p.id != prev.id:
                important.update((r.id, p.id))
                edges.append(Edge(p, r, "branch"))
            prev = r
        important.update((rs[0].id, rs[-1].id))
        if len(rs) <= full:
            important.update(r.id for r in rs)
    # items per run, in commit order: drawn checkpoints and folded stretches
    items: dict[str, list[Node]] = {}
    for run, rs in runs_rows.items():
        out: list[Node] = []
        for r in rs:
            if r.id in important:
                out.append(Node(r))
            elif out and out[-1].kind == "gap":
                out[-1].hidden.append(r)
            else:
                out.append(Node(r, kind="gap", hidden=[r]))
        items[run] = out
    # columns: after the previous item of the lane and after the parent
    col_of: dict[str, int] = {}
    last: dict[str, int] = {}
    everything = sorted((n for ns in items.values() for n in ns), key=lambda n: n.row.seq)
    for n in everything:
        c = last.get(n.row.run, -1) + 1
        if n.kind == "node" and n.row.parent in col_of:
            c = max(c, col_of[n.row.parent] + 1)
        n.col = c
        last[n.row.run] = c
        if n.kind == "node":
            col_of[n.row.id] = c
        else:
            for h in n.hidden:
                col_of[h.id] = c
    # lanes: a run right below the run it started from
    first_parent_run: dict[str, str | None] = {}
    for run, rs in runs_rows.items():
        p = rows.get(rs[0].parent) if rs[0].parent else None
        first_parent_run[run] = p.run if p is not None and p.run != run and p.run in runs_rows else None
    kids: dict[str | None, list[str]] = defaultdict(list)
    for run in sorted(runs_rows, key=lambda r: runs_rows[r][0].seq):
        kids[first_parent_run[run]].append(run)
    lanes: list[str] = []

    def visit(run: str) -> None:
        lanes.append(run)
        for k in kids.get(run, []):
            if k not in lanes:
                visit(k)
    for root in kids.get(None, []):
        visit(root)
    for run in runs_rows:  # cycles of first parents (a damaged store) still get a lane
        if run not in lanes:
            visit(run)
    drawn = {n.row.id for ns in items.values() for n in ns if n.kind == "node"}
    edges = [e for e in edges if e.parent.id in drawn and e.child.id in drawn]
    return Graph(lanes, items, edges, missing, (max(last.values()) + 1) if last else 0)


def svg(g: Graph, statuses: dict[str, str], *, best: set[str] = frozenset(), tagged: dict[str, tuple] | None = None,
        latest: set[str] = frozenset()) -> str:
    tagged = tagged or {}
    width = LABEL_W + max(g.columns, 1) * DX + 40
    height = TOP + len(g.lanes) * DY + 10
    lane_y = {run: TOP + i * DY + DY // 2 for i, run in enumerate(g.lanes)}

    def pos(n: Node) -> tuple[float, float]:
        return LABEL_W + n.col * DX + DX / 2, lane_y[n.row.run]

    node_pos: dict[str, tuple[float, float]] = {}
    for run, ns in g.nodes.items():
        for n in ns:
            if n.kind == "node":
                node_pos[n.row.id] = pos(n)
    parts = [f'<svg id="lineage-graph" class="lineage" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="lineage graph">']
    for run in g.lanes:
        y = lane_y[run]
        ns = g.nodes[run]
        x0, x1 = pos(ns[0])[0], pos(ns[-1])[0]
        status = statuses.get(run, "")
        parts.append(f'<g class="lane" data-run="{esc(run)}">'
                     f'<a href="{esc(url("/run", name=run))}"><text x="8" y="{y + 4}" class="lane-label st-{esc(status)}">'
                     f'{esc(_short(run, 24))}<title>{esc(run)} ({esc(status)})</title></text></a>'
                     f'<line x1="{x0:.0f}" y1="{y}" x2="{x1:.0f}" y2="{y}" class="lane-line"/></g>')
    for e in g.edges:
        (px, py), (cx, cy) = node_pos[e.parent.id], node_pos[e.child.id]
        if e.kind == "cross":
            mx = (px + cx) / 2
            d = f"M{px:.0f},{py:.0f} C{mx:.0f},{py:.0f} {mx:.0f},{cy:.0f} {cx:.0f},{cy:.0f}"
        else:
            d = f"M{px:.0f},{py:.0f} Q{(px + cx) / 2:.0f},{py - DY * 0.55:.0f} {cx:.0f},{cy:.0f}"
        parts.append(f'<path d="{d}" class="edge {e.kind}" data-from="{e.parent.id}" data-to="{e.child.id}">'
                     f'<title>{esc(e.child.run)}@{e.child.epoch} from {esc(e.parent.run)}@{e.parent.epoch}</title>'
                     f'</path>')
    for run in g.lanes:
        for n in g.nodes[run]:
            x, y = pos(n)
            r = n.row
            if n.kind == "gap":
                k = len(n.hidden)
                parts.append(f'<a href="{esc(url("/run", name=run))}" class="gap"><rect x="{x - 19:.0f}" y="{y - 9}" '
                             f'width="38" height="18" rx="9"/><text x="{x:.0f}" y="{y + 4}" text-anchor="middle">'
                             f'+{k}</text><title>{k} more checkpoint{"s" if k != 1 else ""} of {esc(run)} '
                             f'(epochs {n.hidden[0].epoch}-{n.hidden[-1].epoch})</title></a>')
                continue
            cls = ["node"]
            if r.id in best:
                cls.append("best")
            if r.id in tagged:
                cls.append("tagged")
            if r.id in latest:
                cls.append("latest")
            label = f"{safe(r.run)}@{r.epoch}" + (f" step {r.step}" if r.step is not None else "") + \
                    (f" [{r.variant}]" if r.variant else "") + f" · {r.id[:12]}"
            if r.id in tagged:
                label += " · tags: " + ", ".join(safe(t) for t in tagged[r.id])
            if r.id in g.missing_parent:
                label += f" · parent {r.parent[:12]} was deleted"
            extra = ""
            if r.id in g.missing_parent:
                extra = f'<text x="{x - 14:.0f}" y="{y + 4}" class="missing" text-anchor="middle">×</text>'
            parts.append(f'<a href="{esc(url("/checkpoint", id=r.id))}" class="{" ".join(cls)}" data-id="{r.id}" '
                         f'data-run="{esc(r.run)}">{extra}<circle cx="{x:.0f}" cy="{y}" r="7"/>'
                         f'<text x="{x:.0f}" y="{y + 21}" text-anchor="middle" class="node-label">e{r.epoch}'
                         f'{"" if r.step is None else "·" + str(r.step)}</text><title>{esc(label)}</title></a>')
    parts.append("</svg>")
    return "".join(parts)


def _short(text: str, n: int) -> str:
    text = safe(text)
    return text if len(text) <= n else text[:n - 1] + "…"
