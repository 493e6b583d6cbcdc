"""Lay out a lineage DAG as text lanes, the way ``git log --graph`` does.

Each checkpoint has at most one parent, so the picture is a forest: a lane per branch tip, lanes
joining (``|/``) where several checkpoints share a parent (a run resumed or fine-tuned from an
earlier checkpoint), and a lane ending where a root, or a checkpoint whose parent is not shown, is reached.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any, Protocol


class Node(Protocol):
    id: str
    parent: str | None


def topo_newest_first(nodes: Sequence[Any]) -> list[Any]:
    """``nodes`` (oldest first) reordered newest first, every child before its parent.

    A damaged store may hold a parent cycle (no order puts every child first): its members come last,
    newest first, so every checkpoint is still listed exactly once.
    """
    ids = {n.id for n in nodes}
    pending_children: dict[str, int] = {n.id: 0 for n in nodes}
    for n in nodes:
        if n.parent in ids:
            pending_children[n.parent] += 1
    order = {n.id: -i for i, n in enumerate(nodes)}  # newest (last) first
    by_id = {n.id: n for n in nodes}
    ready = [(order[n.id], n.id) for n in nodes if pending_children[n.id] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, nid = heapq.heappop(ready)
        node = by_id[nid]
        out.append(node)
        if node.parent in ids:
            pending_children[node.parent] -= 1
            if pending_children[node.parent] == 0:
                heapq.heappush(ready, (order[node.parent], node.parent))
    if len(out) < len(nodes):
        placed = {n.id for n in out}
        out += [n for n in reversed(nodes) if n.id not in placed]
    return out


def _line(width: int) -> list[str]:
    return [" "] * width


def layout(nodes: Sequence[Any]) -> list[tuple[str, Any | None]]:
    """Rows of (graph text, node or None for a connector row); ``nodes`` newest first (children first)."""
    position = {n.id: k for k, n in enumerate(nodes)}
    lanes: list[str] = []
    rows: list[tuple[str, Any | None]] = []
    for node in nodes:
        hits = [i for i, awaited in enumerate(lanes) if awaited == node.id]
        if not hits:
            lanes.append(node.id)
            hits = [len(lanes) - 1]
        target = hits[0]
        for j in reversed(hits[1:]):  # branches meeting at their common parent
            rows.append((_join(len(lanes), target, j), None))
            del lanes[j]
        row = _line(2 * len(lanes) - 1)
        for k in range(len(lanes)):
            row[2 * k] = "*" if k == target else "|"
        rows.append(("".join(row), node))
        if node.parent is not None and position.get(node.parent, -1) > position[node.id]:
            lanes[target] = node.parent  # the parent is drawn further down (a cycle's is not: the lane ends)
        else:
            if target < len(lanes) - 1:
                rows.append((_close(len(lanes), target), None))
            del lanes[target]
    return [(text.rstrip(), node) for text, node in rows]


def _join(n: int, target: int, j: int) -> str:
    """Lane j merges into lane target (< j); lanes right of j move one to the left."""
    row = _line(2 * n)
    for k in range(n):
        if k == j:
            row[2 * j - 1] = "/"
        elif k > j:
            row[2 * k - 1] = "/"
        else:
            row[2 * k] = "|"
    for k in range(target, j - 1):
        row[2 * k + 1] = "_"
    return "".join(row)


def _close(n: int, target: int) -> str:
    """Lane target ended; the lanes right of it move one to the left."""
    row = _line(2 * n)
    for k in range(n):
        if k < target:
            row[2 * k] = "|"
        elif k > target:
            row[2 * k - 1] = "/"
    return "".join(row)
