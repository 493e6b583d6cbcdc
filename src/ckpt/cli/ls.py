"""ckpt ls: a table of checkpoints."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ckpt.cli.common import age, emit_json, fmt_metric, human_bytes, pass_ctx


@click.command("ls")
@click.option("--run", help="Only this run.")
@click.option("--tag", help="Only checkpoints with this tag.")
@click.option("--sort", metavar="METRIC", help="Best first by METRIC (direction from the run's objective "
              "or the metric's name).")
@click.option("--asc", "order", flag_value="min", help="With --sort: smallest first.")
@click.option("--desc", "order", flag_value="max", help="With --sort: largest first.")
@click.option("--limit", type=int, help="At most N rows.")
@pass_ctx
def command(ctx, run, tag, sort, order, limit) -> None:  # type: ignore[no-untyped-def]
    """List committed checkpoints."""
    store = ctx.open()
    infos = store.list(run=run, sort=sort, mode=order, tag=tag, limit=limit)
    if ctx.as_json:
        emit_json([i.to_dict() for i in infos])
        return
    metric_names: list[str] = []
    for i in infos:
        metric_names += [m for m in i.metrics if m not in metric_names]
    table = Table(box=None, header_style="bold")
    for col in ("id", "run", "epoch", "step", *metric_names, "size", "new", "age", "tags"):
        table.add_column(col, justify="right" if col in ("epoch", "step", "size", "new") else "left",
                         no_wrap=True)
    for i in infos:
        table.add_row(i.short_id, i.run, str(i.epoch), "-" if i.step is None else str(i.step),
                      *[fmt_metric(i.metrics.get(m)) for m in metric_names], human_bytes(i.logical_size),
                      human_bytes(i.new_bytes), age(i.created_at), ",".join(i.tags))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 240))  # piped output: never squeeze columns
    console.print(table)
