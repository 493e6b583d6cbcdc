"""ckpt tag: name a checkpoint (tagged checkpoints are never pruned)."""

from __future__ import annotations

import click

from ckpt.cli.common import describe, emit_json, json_option, pass_ctx
from ckpt.cli.console import safe


@click.command("tag", short_help='Name a checkpoint (kept by prune).')
@click.argument("selector")
@click.argument("name")
@json_option
@pass_ctx
def command(ctx, selector, name) -> None:  # type: ignore[no-untyped-def]
    """Point tag NAME at a checkpoint (moving it if it exists). Tagged checkpoints are kept by prune.

    A tag is then a selector: `ckpt restore NAME`, store.load("NAME").

    \b
    Examples:
      ckpt tag best:val_acc paper-v1
      ckpt tag resnet-a@12 before-lr-drop
    """
    store = ctx.open(readonly=False)
    before = store.list(tag=name)
    info = store.tag(selector, name)
    if ctx.as_json:
        emit_json({"tag": name, "checkpoint": info.to_dict(), "moved_from": before[0].id if before else None})
        return
    moved = f" (moved from {describe(before[0])})" if before and before[0].id != info.id else ""
    click.echo(f"tagged {describe(info)} as {safe(name)}{moved}")
