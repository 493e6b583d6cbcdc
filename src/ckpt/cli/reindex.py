"""ckpt reindex: rebuild the index from the manifests on storage."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import emit_json, json_option, pass_ctx


@click.command("reindex", short_help='Rebuild the index from the manifests.')
@json_option
@pass_ctx
def command(ctx) -> None:  # type: ignore[no-untyped-def]
    """Rebuild the index from the stored manifests (after losing or damaging it).

    The manifests on storage are the source of truth; the index is a cache of them.

    \b
    Examples:
      ckpt reindex
      ckpt --index postgresql://db/ckpt reindex
    """
    store = ctx.open(readonly=False, rebuild_index=True)
    with console.progress("rebuilding the index from the manifests"):
        n = store.reindex()
    if ctx.as_json:
        emit_json({"checkpoints": n})
    else:
        click.echo(f"reindexed {n} checkpoints")
