"""ckpt diff: what changed between two checkpoints, tensor by tensor."""

from __future__ import annotations

import math

import click

from ckpt.cli import console
from ckpt.diff import ABSENT
from ckpt.cli.common import describe, emit_json, fmt_delta, fmt_metric, json_option, pass_ctx
from ckpt.validation import INT_MAX


def to_json(d) -> dict:  # type: ignore[no-untyped-def]
    return {
        "a": d.a.to_dict(), "b": d.b.to_dict(),
        "only_a": d.only_a, "only_b": d.only_b,
        "shape_or_dtype": [{"key": k, "a": a, "b": b} for k, a, b in d.shape_or_dtype],
        "changed": [{"key": c.key, "max_abs_diff": c.max_abs_diff, "rel_l2": c.rel_l2} for c in d.changed],
        "identical": d.identical,
        "values": [{"key": k, "a": a, "b": b} for k, a, b in d.values],
        "metrics": {n: {"a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None}
                    for n, (a, b) in d.metrics.items()},
    }


def _value(v) -> str:  # type: ignore[no-untyped-def]
    return "(absent)" if isinstance(v, str) and v == ABSENT else repr(v)


def _rank(c) -> float:  # type: ignore[no-untyped-def]
    v = c.rel_l2 if c.rel_l2 is not None else c.max_abs_diff
    return -math.inf if v is None or v != v else v


@click.command("diff", short_help='What changed between two checkpoints.')
@click.argument("a")
@click.argument("b")
@click.option("--top", type=click.IntRange(1, INT_MAX), metavar="N", help="List only the N most changed tensors.")
@json_option
@pass_ctx
def command(ctx, a, b, top) -> None:  # type: ignore[no-untyped-def]
    """Compare two checkpoints: keys, shapes, tensor changes, other values, metrics.

    Unchanged tensors are recognised by their content hash without being read, and are counted
    rather than listed. Changed tensors show the largest absolute difference and the relative L2
    change ||b - a|| / ||a||.

    \b
    Examples:
      ckpt diff resnet-a@3 best:val_acc
      ckpt diff latest~1 latest --top 20
      ckpt diff base-model finetune-b --json
    """
    store = ctx.open()
    d = store.diff(a, b)
    if ctx.as_json:
        emit_json(to_json(d))
        return
    click.echo(f"A  {describe(d.a)}")
    click.echo(f"B  {describe(d.b)}")
    if d.metrics:
        t = console.table("metric", "A", "B", "delta", right=("A", "B", "delta"))
        for name, (x, y) in d.metrics.items():
            t.add_row(name, fmt_metric(x), fmt_metric(y), fmt_delta(x, y))
        click.echo("\nmetrics")
        console.show(t)
    for title, keys in ((f"only in A ({len(d.only_a)})", d.only_a), (f"only in B ({len(d.only_b)})", d.only_b)):
        if keys:
            click.echo(f"\n{title}")
            for k in keys:
                click.echo(f"  {k}")
    if d.shape_or_dtype:
        click.echo(f"\nshape or dtype changed ({len(d.shape_or_dtype)})")
        for k, x, y in d.shape_or_dtype:
            click.echo(f"  {k}: {x} -> {y}")
    if d.changed:
        changed = sorted(d.changed, key=_rank, reverse=True)
        shown = changed[:top] if top else changed
        more = f", {len(changed) - len(shown)} more not shown" if len(shown) < len(changed) else ""
        click.echo(f"\nchanged tensors ({len(changed)}, most changed first{more})")
        t = console.table("key", "max |a-b|", "rel L2", right=("max |a-b|", "rel L2"))
        for c in shown:
            t.add_row(c.key, fmt_metric(c.max_abs_diff), "-" if c.rel_l2 is None else f"{c.rel_l2:.3g}")
        console.show(t)
    click.echo(f"\nidentical tensors: {d.identical}")
    if d.values:
        click.echo(f"\nchanged values ({len(d.values)})")
        for k, x, y in d.values:
            click.echo(f"  {k}: {_value(x)} -> {_value(y)}")
