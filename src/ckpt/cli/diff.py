"""ckpt diff: what changed between two checkpoints, tensor by tensor."""

from __future__ import annotations

import math
from typing import Any

import click

from ckpt.cli import console
from ckpt.cli.common import CliError, describe, emit_json, fmt_delta, fmt_metric, json_option, pass_ctx, split_key
from ckpt.validation import INT_MAX

VALUE_WIDTH = 60  # a value whose repr is longer is summarised (type and length), not dumped


def to_json(d, summary=()) -> dict:  # type: ignore[no-untyped-def]
    return {
        "a": d.a.to_dict(), "b": d.b.to_dict(),
        "only_a": d.only_a, "only_b": d.only_b,
        "shape_or_dtype": [{"key": k, "a": a, "b": b} for k, a, b in d.shape_or_dtype],
        "changed": [{"key": c.key, "max_abs_diff": c.max_abs_diff, "rel_l2": c.rel_l2} for c in d.changed],
        "identical": d.identical,
        "values": [{"key": k, "a": a, "b": b} for k, a, b in d.values],
        "metrics": {n: {"a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None}
                    for n, (a, b) in d.metrics.items()},
        "summary": [{"kind": s.kind, "text": s.text, "keys": s.keys} for s in summary],
    }


def _value(v: Any) -> str:
    from ckpt.diff import value_text
    return console.safe(value_text(v, VALUE_WIDTH))


def _rank(c) -> float:  # type: ignore[no-untyped-def]
    v = c.rel_l2 if c.rel_l2 is not None else c.max_abs_diff
    return -math.inf if v is None or v != v else v


def _restrict(d, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Keep only the keys at or below ``prefix`` in every list of ``d`` (metrics stay)."""
    from ckpt.diff import under
    d.only_a = [k for k in d.only_a if under(k, prefix)]
    d.only_b = [k for k in d.only_b if under(k, prefix)]
    d.shape_or_dtype = [x for x in d.shape_or_dtype if under(x[0], prefix)]
    d.changed = [c for c in d.changed if under(c.key, prefix)]
    d.values = [x for x in d.values if under(x[0], prefix)]


def _identical_under(ma, mb, prefix: str | None) -> int:  # type: ignore[no-untyped-def]
    from ckpt.diff import under
    la = {"/".join(map(str, p)): ma.slots[s].hash for p, s in ma.leaves}
    lb = {"/".join(map(str, p)): mb.slots[s].hash for p, s in mb.leaves}
    return sum(1 for k, h in la.items() if under(k, prefix) and lb.get(k) == h)


def _check_only(store, ids, leaves, parts) -> str:  # type: ignore[no-untyped-def]
    """The ``--only`` prefix as diff keys spell it; an error when neither checkpoint has the key."""
    from ckpt.diff import under
    from ckpt.errors import InvalidArgumentError
    prefix = "/".join(parts)
    if any(under(k, prefix) for k in leaves):
        return prefix
    errors = []
    for cid in ids:  # no tensor below it: a value sub-tree (cheap to load), or nothing
        try:
            store.load(cid, key=parts)
            return prefix
        except InvalidArgumentError as exc:
            errors.append(str(exc))
    raise CliError(f"--only {prefix}: neither checkpoint has this key ({errors[0]})")


@click.command("diff", short_help='What changed between two checkpoints.')
@click.argument("a")
@click.argument("b")
@click.option("--only", "only", metavar="KEY", help="Compare only this sub-tree, e.g. 'model' or "
              "'optimizer/param_groups' ('/' separates levels). Metrics are always shown.")
@click.option("--top", type=click.IntRange(1, INT_MAX), metavar="N", help="List at most N changed tensors and N "
              "changed values (most changed tensors first).")
@json_option
@pass_ctx
def command(ctx, a, b, only, top) -> None:  # type: ignore[no-untyped-def]
    """Compare two checkpoints: keys, shapes, tensor changes, other values, metrics.

    Unchanged tensors are recognised by their content hash without being read, and are counted
    rather than listed. Changed tensors show the largest absolute difference and the relative L2
    change ||b - a|| / ||a||. The training loop's bookkeeping (RNG states, the metric history, the
    data order) is summarised in one line each; --json has every key.

    \b
    Examples:
      ckpt diff resnet-a@3 best:val_acc
      ckpt diff latest~1 latest --top 20
      ckpt diff resnet-a@3 resnet-a@7 --only model
      ckpt diff base-model finetune-b --json
    """
    from ckpt.diff import summarize
    store = ctx.open()
    parts = split_key(only)
    ia, ib = store.get(a), store.get(b)
    ma, mb = store.manifest(ia.id), store.manifest(ib.id)
    prefix = None
    if parts:
        keys = {"/".join(map(str, p)) for m in (ma, mb) for p, _ in m.leaves}
        prefix = _check_only(store, (ia.id, ib.id), keys, parts)
    d = store.diff(ia.id, ib.id, only=tuple(prefix.split("/")) if prefix is not None else None)
    if prefix is not None:
        _restrict(d, prefix)
        d.identical = _identical_under(ma, mb, prefix)
    nbytes = {"/".join(map(str, p)): m.slots[s].nbytes for m in (ma, mb) for p, s in m.leaves}
    summary = summarize(d, nbytes)
    if ctx.as_json:
        emit_json(to_json(d, summary))
        return
    render(d, summary, top, prefix)


def render(d, summary, top: int | None, prefix: str | None) -> None:  # type: ignore[no-untyped-def]
    safe = console.safe
    folded = {k for s in summary for k in s.keys}
    click.echo(f"A  {describe(d.a)}")
    click.echo(f"B  {describe(d.b)}")
    if prefix is not None:
        click.echo(f"only keys under {safe(prefix)}")
    if d.metrics:
        C = console.Column
        t = console.FitTable(C("metric", min_width=12), C("A", right=True), C("B", right=True),
                             C("delta", right=True, priority=1))
        for name, (x, y) in d.metrics.items():
            t.add_row(name, fmt_metric(x), fmt_metric(y), fmt_delta(x, y))
        click.echo("\nmetrics")
        console.show(t)
    if summary:
        click.echo("\ntraining state")
        for s in summary:
            click.echo(f"  {safe(s.text)}")
    only_a = [k for k in d.only_a if k not in folded]
    only_b = [k for k in d.only_b if k not in folded]
    for title, keys in ((f"only in A ({len(only_a)})", only_a), (f"only in B ({len(only_b)})", only_b)):
        if keys:
            click.echo(f"\n{title}")
            for k in keys:
                click.echo(f"  {safe(k)}")
    shape = [x for x in d.shape_or_dtype if x[0] not in folded]
    if shape:
        click.echo(f"\nshape or dtype changed ({len(shape)})")
        for k, x, y in shape:
            click.echo(f"  {safe(k)}: {safe(x)} -> {safe(y)}")
    changed = sorted((c for c in d.changed if c.key not in folded), key=_rank, reverse=True)
    if changed:
        shown = changed[:top] if top else changed
        more = f", {len(changed) - len(shown)} more not shown" if len(shown) < len(changed) else ""
        click.echo(f"\nchanged tensors ({len(changed)}, most changed first{more})")
        C = console.Column
        t = console.FitTable(C("key", min_width=24, cut="middle"), C("max |a-b|", right=True),
                             C("rel L2", right=True))
        for c in shown:
            t.add_row(c.key, fmt_metric(c.max_abs_diff), "-" if c.rel_l2 is None else f"{c.rel_l2:.3g}")
        console.show(t)
    click.echo(f"\nidentical tensors: {d.identical}")
    values = [x for x in d.values if x[0] not in folded]
    if values:
        shown_v = values[:top] if top else values
        more = f", {len(values) - len(shown_v)} more not shown" if len(shown_v) < len(values) else ""
        click.echo(f"\nchanged values ({len(values)}{more})")
        for k, x, y in shown_v:
            click.echo(f"  {safe(k)}: {_value(x)} -> {_value(y)}")
