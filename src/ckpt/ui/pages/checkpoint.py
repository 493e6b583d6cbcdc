"""A checkpoint: its metadata, lineage, tensor tree (where each tensor's bytes live) and the commands to
get it out. Read from the index and the manifest only (no tensor is read, torch is not imported).

Where a tensor's bytes live, by the checkpoint that wrote its pack (the pack's first user): "stored
here" (this save wrote them), "shared with run R (R@E)" (another run's checkpoint, e.g. the pretrain run
a fine-tune started from), "shared with parent", or "shared with R@E" (an earlier checkpoint of this
run). A tensor tied to an earlier key of the same
checkpoint (tied weights) is stored once and says so.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from typing import Any

from ckpt.errors import CkptError, InvalidArgumentError
from ckpt.ui.html import (checkpoint_link, copy_block, esc, fmt_metric, human_bytes, link, page, run_link, safe,
                          when)

MAX_ANCESTORS = 10


def _key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def tensors(app: Any, info: Any, m: Any) -> tuple[list[dict], dict[str, int]]:
    """One dict per tensor leaf: key, dtype, shape, bytes, where (the storage label)."""
    parent_hashes: set[str] = set()
    if info.parent:
        try:
            parent_hashes = {s.hash for s in app.source.manifest(info.parent).slots}
        except CkptError:
            parent_hashes = set()
    owners = app.source.store.catalog.pack_owners(sorted(m.packs))
    lin = app.source.lineage()
    with app.source.locked():
        owner_rows = {p: lin.rows.get(cid) for p, cid in owners.items()}
    seen: dict[int, str] = {}
    out: list[dict] = []
    totals: dict[str, int] = defaultdict(int)
    for path, slot_index in m.leaves:
        s = m.slots[slot_index]
        key = _key(path)
        if slot_index in seen:
            where, cls = f"tied to {seen[slot_index]}", "tied"
            out.append({"key": key, "dtype": s.dtype, "shape": s.shape, "bytes": s.nbytes, "where": where, "cls": cls})
            continue
        seen[slot_index] = key
        owner = owners.get(s.pack)
        row = owner_rows.get(s.pack)
        if owner == info.id:
            where, cls = "stored here", "here"
        elif row is not None and row.run != info.run:
            where, cls = f"shared with run {safe(row.run)} ({safe(row.run)}@{row.epoch})", "other-run"
        elif owner is not None and owner == info.parent:
            where, cls = "shared with parent", "parent"
        elif row is not None:
            where, cls = f"shared with {safe(row.run)}@{row.epoch}", "same-run"
        elif s.hash in parent_hashes:
            where, cls = "shared with parent", "parent"
        else:
            where, cls = "shared (pack of a deleted checkpoint)", "other"
        totals[cls] += s.nbytes
        out.append({"key": key, "dtype": s.dtype, "shape": s.shape, "bytes": s.nbytes, "where": where, "cls": cls,
                    "owner": owner})
    return out, dict(totals)


def tree(items: list[dict]) -> str:
    """The tensors grouped by their first two key levels (``model/encoder``), each group collapsible."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for t in items:
        parts = t["key"].split("/")
        groups["/".join(parts[:2]) if len(parts) > 2 else parts[0] if len(parts) > 1 else "(top level)"].append(t)
    out = []
    for name, ts in groups.items():
        total = sum(t["bytes"] for t in ts if t["cls"] != "tied")
        rows = "".join(
            f'<tr class="tensor {t["cls"]}" data-key="{esc(t["key"])}"><td class="key">{esc(t["key"])}</td>'
            f'<td>{esc(t["dtype"])}</td><td class="shape">{esc(list(t["shape"]))}</td>'
            f'<td class="num" data-v="{t["bytes"]}">{esc(human_bytes(t["bytes"]))}</td>'
            f'<td class="where {t["cls"]}">{esc(t["where"])}</td></tr>' for t in ts)
        out.append(f'<details class="tensor-group" open><summary><b>{esc(name)}</b> '
                   f'<span class="muted">{len(ts)} tensor{"s" if len(ts) != 1 else ""} · {esc(human_bytes(total))}'
                   f'</span></summary><table class="data tensors"><thead><tr><th>key</th><th>dtype</th><th>shape</th>'
                   f'<th>bytes</th><th>stored</th></tr></thead><tbody>{rows}</tbody></table></details>')
    return "".join(out)


def commands(app: Any, info: Any) -> str:
    loc = app.command_location()
    store = f"--store {shlex.quote(loc)} " if loc else ""
    stem = f"{info.run}-e{info.epoch}-{info.id[:8]}"
    shell = (f"ckpt {store}restore {info.id}\n"
             f"ckpt {store}export {info.id} -o model.safetensors\n"
             f"ckpt {store}diff {info.parent or 'latest'} {info.id}")
    py = ("from ckpt import CheckpointStore\n\n"
          f"store = CheckpointStore({loc or 'STORE'!r}, readonly=True)\n"
          f"state = store.load({info.id!r})            # the structure that was saved, exactly\n"
          f"store.load_into(model, {info.id!r})        # or: its weights into your model, in place\n"
          f"view = store.open({info.id!r})             # or: lazily, one tensor at a time\n")
    note = ("" if loc else '<p class="hint">add --store (or set CKPT_STORE) for this store</p>')
    return (copy_block(shell, "command line") + copy_block(py, "Python", "python") + note
            + f'<p class="hint">restore writes {esc(stem)}.pt by default (-o to choose).</p>')


def writes(app: Any, info: Any) -> str:
    c = app.chrome()
    if not c.writable:
        return ""
    untag = " ".join(c.form("/action/untag", {"id": info.id, "name": t}, f"untag {t}", cls="untag")
                     for t in info.tags)
    tag = c.form("/action/tag", {"id": info.id}, "tag", cls="tag-form",
                 extra='<input type="text" name="name" placeholder="tag name" required aria-label="tag name"> ')
    rm = c.form("/action/rm", {"id": info.id}, "remove this checkpoint", cls="rm-form danger",
                confirm=f"Remove checkpoint {info.id[:12]} ({info.run}@{info.epoch})? Its packs that no other "
                        f"checkpoint uses are deleted.")
    return f'<section class="writes"><h2>Change</h2><div class="toolbar">{tag} {untag}</div><div>{rm}</div></section>'


def render(app: Any, q: Any) -> str:
    sel = q.one("id")
    if not sel:
        raise InvalidArgumentError("which checkpoint? /checkpoint?id=ID_OR_SELECTOR")
    info = app.source.store.get(sel)
    m = app.source.manifest(info.id)
    items, totals = tensors(app, info, m)
    lin = app.source.lineage()
    with app.source.locked():
        chain, cur = [], lin.rows.get(info.id)
        broken = None
        while cur is not None and cur.parent and len(chain) < MAX_ANCESTORS:
            nxt = lin.rows.get(cur.parent)
            if nxt is None:
                broken = cur.parent
                break
            chain.append(nxt)
            cur = nxt
        more = cur is not None and cur.parent and len(chain) == MAX_ANCESTORS
        kids = [lin.rows[c] for c in lin.children.get(info.id, ()) if c in lin.rows]
    parent = "-"
    if info.parent:
        parent = (f"{run_link(chain[0].run)}@{chain[0].epoch} ({checkpoint_link(chain[0].id)})" if chain else
                  f"{esc(info.parent[:12])} (deleted)")
    line = " ← ".join([f"{esc(info.run)}@{info.epoch}"] + [f'{checkpoint_link(a.id, f"{safe(a.run)}@{a.epoch}")}'
                                                         for a in chain])
    if broken:
        line += f" ← {esc(broken[:12])} (deleted)"
    elif more:
        line += " ← …"
    children = ", ".join(f'{checkpoint_link(k.id, f"{safe(k.run)}@{k.epoch}")}' for k in kids) or "-"
    n_slots = len(m.slots)
    facts = [
        ("id", f'<code class="full-id">{esc(info.id)}</code>'),
        ("run", f"{run_link(info.run)} · epoch {info.epoch}" + (f" · step {info.step}" if info.step is not None else "")
         + (f' · variant <span class="variant">{esc(info.variant)}</span>' if info.variant else "")),
        ("created", esc(when(info.created_at))),
        ("parent", parent), ("lineage", line), ("children", children),
        ("content hash", f"<code>{esc(info.content_hash)}</code>"),
        ("size", f"{esc(human_bytes(info.logical_size))} in {len(items)} tensors ({n_slots} distinct), "
                 f"{len(m.packs)} pack(s)"),
        ("stored", f"{esc(human_bytes(info.new_bytes))} written by this save"),
        ("tags", " ".join(f'<span class="tag">{esc(t)}</span>' for t in info.tags) or "-"),
        ("format", f"manifest format {info.format}"),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    metrics = "".join(f"<tr><td>{esc(k)}</td><td class='num'>{esc(fmt_metric(v))}</td></tr>"
                      for k, v in info.metrics.items())
    metrics_html = (f'<table class="data metrics"><thead><tr><th>metric</th><th>value</th></tr></thead>'
                    f'<tbody>{metrics}</tbody></table>' if metrics else '<p class="empty">no metrics</p>')
    labels = {"here": "stored here", "parent": "shared with parent", "same-run": "shared with earlier checkpoints",
              "other-run": "shared with other runs", "other": "in packs of deleted checkpoints"}
    split = " · ".join(f'<span class="where {k}">{esc(labels[k])}: {esc(human_bytes(v))}</span>'
                       for k, v in totals.items() if v)
    diff = ""
    if info.parent and chain:
        diff = link("/diff", "diff with its parent", "button", a=info.parent, b=info.id)
    diff += (f' <form method="get" action="/diff" class="inline"><input type="hidden" name="b" value="{esc(info.id)}">'
             f'<input type="text" name="a" placeholder="another checkpoint (selector)" aria-label="compare with">'
             f' <button type="submit">diff</button></form>')
    body = (f'<h1>Checkpoint <span class="run-title">{esc(info.run)}@{info.epoch}</span> '
            f'<code>{esc(info.short_id)}</code></h1>'
            f'<div class="cols"><dl class="facts">{dl}</dl><div>{metrics_html}<div class="toolbar">{diff}</div></div></div>'
            f'<section><h2>Get it out</h2>{commands(app, info)}</section>{writes(app, info)}'
            f'<section><h2>Tensors</h2><p class="split">{split}</p>{tree(items)}</section>')
    return page(app.chrome(), f"{info.run}@{info.epoch}", body, notice=app.notice(q))
