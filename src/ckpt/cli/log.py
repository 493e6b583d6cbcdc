"""ckpt log: the lineage of checkpoints, newest first, as a list or a git-style graph."""

from __future__ import annotations

import click
from rich.text import Text

from ckpt.cli import console, graph
from ckpt.cli.common import age, emit_json, fmt_metric, json_option, pass_ctx
from ckpt.validation import INT_MAX


def _select(store, run):  # type: ignore[no-untyped-def]
    """Every checkpoint (oldest first), or a run's checkpoints plus all their ancestors in other runs."""
    everything = store.list()
    if run is None:
        return everything
    store.list(run=run)  # an unknown run fails here, with the run names it knows
    by_id = {i.id: i for i in everything}
    keep = {i.id for i in everything if i.run == run}
    for cid in list(keep):
        parent = by_id[cid].parent
        while parent in by_id and parent not in keep:
            keep.add(parent)
            parent = by_id[parent].parent
    return [i for i in everything if i.id in keep]


def _label(info, by_id) -> Text:  # type: ignore[no-untyped-def]
    text = Text()
    text.append(info.short_id, style="yellow")
    text.append(f" {info.run}@{info.epoch}", style="bold")
    if info.step is not None:
        text.append(f" step {info.step}")
    if info.tags:
        text.append(f" ({', '.join(info.tags)})", style="cyan")
    metrics = "  ".join(f"{k}={fmt_metric(v)}" for k, v in info.metrics.items())
    if metrics:
        text.append(f"  {metrics}")
    parent = by_id.get(info.parent) if info.parent else None
    if parent is not None and parent.run != info.run:
        text.append(f"  <- branched from {parent.run}@{parent.epoch}", style="magenta")
    elif info.parent and parent is None:
        text.append(f"  <- parent {info.parent[:12]} deleted", style="red")
    text.append(f"  {age(info.created_at)}", style="dim")
    return text


@click.command("log", short_help='Lineage, newest first (--graph: branches).')
@click.argument("run", required=False)
@click.option("--graph", "as_graph", is_flag=True, help="Draw the lineage as a graph (like git log --graph).")
@click.option("--limit", type=click.IntRange(1, INT_MAX), metavar="N", help="At most N checkpoints (newest).")
@json_option
@pass_ctx
def command(ctx, run, as_graph, limit) -> None:  # type: ignore[no-untyped-def]
    """Show the lineage, newest first: which checkpoint each one continued from.

    With RUN, that run's checkpoints and their ancestors (a fine-tune shows the base run up to
    the checkpoint it branched from). --graph draws branches where a run was resumed or
    fine-tuned from an earlier checkpoint.

    \b
    Examples:
      ckpt log --graph
      ckpt log finetune-b --graph
      ckpt log resnet-a --json
    """
    store = ctx.open()
    infos = _select(store, run)
    ordered = graph.topo_newest_first(infos)
    if limit is not None:
        ordered = ordered[:limit]
    everything = {i.id: i for i in store.list()} if run is not None else {i.id: i for i in infos}
    if ctx.as_json:
        children: dict[str, list[str]] = {}
        for i in infos:
            if i.parent:
                children.setdefault(i.parent, []).append(i.id)
        emit_json([{**i.to_dict(), "children": children.get(i.id, [])} for i in ordered])
        return
    if not ordered:
        click.echo("no checkpoints in this store yet", err=True)
        return
    if as_graph:
        for text, node in graph.layout(ordered):
            line = Text(text) if node is None else Text.assemble(Text(text), " ", _label(node, everything))
            console.show(line)
        return
    t = console.table("id", "run", "epoch", "step", "parent", "metrics", "tags", "age", right=("epoch", "step"))
    for i in ordered:
        parent = everything.get(i.parent) if i.parent else None
        ptxt = "-" if not i.parent else (f"{parent.short_id} ({parent.run}@{parent.epoch})" if parent
                                          else f"{i.parent[:12]} (deleted)")
        t.add_row(i.short_id, i.run, str(i.epoch), "-" if i.step is None else str(i.step), ptxt,
                  "  ".join(f"{k}={fmt_metric(v)}" for k, v in i.metrics.items()), ",".join(i.tags),
                  age(i.created_at))
    console.show(t)
