"""ckpt ls: a table of checkpoints."""

from __future__ import annotations

import click

from ckpt.cli import console, where
from ckpt.cli.common import CliError, age, emit_json, fmt_metric, human_bytes, json_option, pass_ctx
from ckpt.validation import INT_MAX


@click.command("ls", short_help='List checkpoints (filter, sort by a metric).')
@click.option("--run", help="Only this run.")
@click.option("--tag", help="Only checkpoints with this tag.")
@click.option("--where", "conditions", multiple=True, metavar="EXPR",
              help='Filter on metrics, e.g. "val_acc>0.9" or "val_acc>=0.8,epoch>5" (ops: > >= < <= == !=; '
                   'commas and repeated --where combine with AND).')
@click.option("--sort", metavar="METRIC", help="Best first by METRIC (direction from the run's objective "
              "or the metric's name); also 'epoch' or 'created'.")
@click.option("--asc", "order", flag_value="min", help="With --sort: smallest first.")
@click.option("--desc", "order", flag_value="max", help="With --sort: largest first.")
@click.option("--limit", type=click.IntRange(0, INT_MAX), metavar="N", help="At most N rows (after filtering).")
@json_option
@pass_ctx
def command(ctx, run, tag, conditions, sort, order, limit) -> None:  # type: ignore[no-untyped-def]
    """List committed checkpoints, oldest first (best first with --sort).

    \b
    Examples:
      ckpt ls --sort val_acc --limit 5
      ckpt ls --run resnet-a --where "val_acc>0.9" --where "epoch>=10"
      ckpt ls --tag paper-v1 --json
    """
    try:
        filters = where.parse(conditions)
        store = ctx.open()
        infos = store.list(run=run, sort=sort, mode=order, tag=tag, limit=None if filters else limit)
        if filters:
            infos = where.apply(filters, infos)[:limit]
    except where.WhereError as exc:
        raise CliError(f"--where: {exc}") from None
    if ctx.as_json:
        emit_json([i.to_dict() for i in infos])
        return
    if not infos:
        click.echo("no checkpoints" + (" match" if (filters or run or tag) else " in this store yet"), err=True)
        return
    metric_names: list[str] = []
    for i in infos:
        metric_names += [m for m in i.metrics if m not in metric_names]
    t = console.table("id", "run", "epoch", "step", *metric_names, "size", "new", "age", "tags",
                      right=("epoch", "step", "size", "new", *metric_names))
    for i in infos:
        t.add_row(i.short_id, i.run, str(i.epoch), "-" if i.step is None else str(i.step),
                  *[fmt_metric(i.metrics.get(m)) for m in metric_names], human_bytes(i.logical_size),
                  human_bytes(i.new_bytes), age(i.created_at), ",".join(i.tags))
    console.show(t)
