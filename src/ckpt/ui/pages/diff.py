"""Diff: two checkpoints side by side. Metric deltas; tensors whose hashes differ are read and ranked by
relative L2 change; equal hashes are counted without reading a byte; the training loop's bookkeeping
(RNG states, history, data order) is summarised in one line each, as ``ckpt diff`` does. This page (and
only this one) imports torch, on first use."""

from __future__ import annotations

import math
import time
from typing import Any

from ckpt.ui.html import checkpoint_link, esc, fmt_delta, fmt_metric, page, run_link

MAX_TENSORS = 300
MAX_VALUES = 200
VALUE_WIDTH = 80


def _value(v: Any) -> str:
    from ckpt.diff import value_text
    return value_text(v, VALUE_WIDTH)


def _rank(c: Any) -> float:
    v = c.rel_l2 if c.rel_l2 is not None else c.max_abs_diff
    return -math.inf if v is None or v != v else v


def _form(app: Any, a: str, b: str) -> str:
    suggestions = "".join(f'<option value="{esc(s)}">' for s in app.suggestions())
    return (f'<form method="get" action="/diff" class="diff-form toolbar">'
            f'<label>A <input type="text" name="a" id="diff-a" value="{esc(a)}" list="selectors" '
            f'placeholder="e.g. resnet-a@3, latest~1, 3f9a1c…"></label> '
            f'<label>B <input type="text" name="b" id="diff-b" value="{esc(b)}" list="selectors" '
            f'placeholder="e.g. best, resnet-a:latest"></label> <button type="submit">compare</button>'
            f'<datalist id="selectors">{suggestions}</datalist></form>'
            '<p class="hint">Any selector: RUN@EPOCH, RUN:latest, best, best:METRIC, a tag, an id prefix, SEL~N.</p>')


def render(app: Any, q: Any) -> str:
    a, b = (q.one("a") or "").strip(), (q.one("b") or "").strip()
    body = "<h1>Diff</h1>" + _form(app, a, b)
    if a and b:
        body += result(app, a, b)
    return page(app.chrome(), "Diff", body, active="/diff")


def result(app: Any, a: str, b: str) -> str:
    from ckpt.diff import summarize
    store = app.source.store
    ia, ib = store.get(a), store.get(b)
    t0 = time.perf_counter()
    d = store.diff(ia.id, ib.id)
    took = time.perf_counter() - t0
    ma, mb = app.source.manifest(ia.id), app.source.manifest(ib.id)
    nbytes = {"/".join(map(str, p)): m.slots[s].nbytes for m in (ma, mb) for p, s in m.leaves}
    summary = summarize(d, nbytes)
    folded = {k for s in summary for k in s.keys}
    head = (f'<table class="data pair"><tbody>'
            f'<tr><th>A</th><td>{run_link(ia.run)}@{ia.epoch} {checkpoint_link(ia.id)}</td></tr>'
            f'<tr><th>B</th><td>{run_link(ib.run)}@{ib.epoch} {checkpoint_link(ib.id)}</td></tr></tbody></table>'
            f'<p class="hint">compared in {took:.2f} s · <a href="/diff?a={esc(ib.id)}&amp;b={esc(ia.id)}">swap</a></p>')
    parts = [head]
    if d.metrics:
        rows = "".join(f'<tr data-metric="{esc(n)}"><td>{esc(n)}</td><td class="num">{esc(fmt_metric(x))}</td>'
                       f'<td class="num">{esc(fmt_metric(y))}</td><td class="num delta">{esc(fmt_delta(x, y))}</td></tr>'
                       for n, (x, y) in d.metrics.items())
        parts.append(f'<h2>Metrics</h2><table class="data" id="diff-metrics"><thead><tr><th>metric</th><th>A</th>'
                     f'<th>B</th><th>delta</th></tr></thead><tbody>{rows}</tbody></table>')
    changed = sorted((c for c in d.changed if c.key not in folded), key=_rank, reverse=True)
    shown = changed[:MAX_TENSORS]
    rows = "".join(f'<tr data-key="{esc(c.key)}"><td class="key">{esc(c.key)}</td>'
                   f'<td class="num">{"-" if c.rel_l2 is None else f"{c.rel_l2:.3g}"}</td>'
                   f'<td class="num">{esc(fmt_metric(c.max_abs_diff))}</td></tr>' for c in shown)
    more = f" (the {len(shown)} most changed of {len(changed)})" if len(shown) < len(changed) else ""
    parts.append(f'<h2>Changed tensors: <span id="changed-count">{len(changed)}</span>{more}</h2>'
                 + (f'<table class="data" id="diff-tensors"><thead><tr><th>key</th><th>relative L2 ‖b−a‖/‖a‖</th>'
                    f'<th>max |a−b|</th></tr></thead><tbody>{rows}</tbody></table>' if rows else
                    '<p class="empty">none</p>'))
    parts.append(f'<p class="identical"><b id="identical-count">{d.identical}</b> tensors identical, recognised by '
                 f'their content hash without reading them.</p>')
    if summary:
        parts.append("<h2>Training state</h2><ul class='summary'>" +
                     "".join(f"<li>{esc(s.text)}</li>" for s in summary) + "</ul>")
    only_a = [k for k in d.only_a if k not in folded]
    only_b = [k for k in d.only_b if k not in folded]
    for title, keys in (("Only in A", only_a), ("Only in B", only_b)):
        if keys:
            parts.append(f"<h2>{title} ({len(keys)})</h2><ul class='keys'>" +
                         "".join(f"<li>{esc(k)}</li>" for k in keys[:MAX_VALUES]) + "</ul>")
    shape = [x for x in d.shape_or_dtype if x[0] not in folded]
    if shape:
        parts.append(f"<h2>Shape or dtype changed ({len(shape)})</h2><ul class='keys'>" +
                     "".join(f"<li>{esc(k)}: {esc(x)} → {esc(y)}</li>" for k, x, y in shape[:MAX_VALUES]) + "</ul>")
    values = [x for x in d.values if x[0] not in folded]
    if values:
        rows = "".join(f'<tr><td class="key">{esc(k)}</td><td>{esc(_value(x))}</td><td>{esc(_value(y))}</td></tr>'
                       for k, x, y in values[:MAX_VALUES])
        parts.append(f'<h2>Changed values ({len(values)})</h2><table class="data" id="diff-values"><thead><tr>'
                     f'<th>key</th><th>A</th><th>B</th></tr></thead><tbody>{rows}</tbody></table>')
    return "".join(parts)
