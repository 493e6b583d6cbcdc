"""ckpt untag: remove a tag (the checkpoint stays)."""

from __future__ import annotations

import click

from ckpt.cli.common import CliError, describe, emit_json, json_option, pass_ctx
from ckpt.cli.console import safe


@click.command("untag", short_help='Remove tags.')
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@json_option
@pass_ctx
def command(ctx, names) -> None:  # type: ignore[no-untyped-def]
    """Remove tags. The checkpoints stay, but prune may now remove them.

    \b
    Examples:
      ckpt untag before-lr-drop
      ckpt untag draft-1 draft-2
    """
    store = ctx.open(readonly=False)
    found = {}
    for name in names:
        hits = store.list(tag=name)
        if not hits:
            raise CliError(f"no tag named {safe(name)!r}; `ckpt ls` shows the tags in use")
        found[name] = hits[0]
    for name in found:
        store.untag(name)
    if ctx.as_json:
        emit_json([{"tag": n, "checkpoint": i.id} for n, i in found.items()])
        return
    for name, info in found.items():
        click.echo(f"removed tag {safe(name)} from {describe(info)}")
