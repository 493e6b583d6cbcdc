"""ckpt reindex: rebuild the index from the manifests on storage."""

from __future__ import annotations

import click

from ckpt.cli.common import emit_json, pass_ctx


@click.command("reindex")
@pass_ctx
def command(ctx) -> None:  # type: ignore[no-untyped-def]
    """Rebuild the index from the stored manifests (after losing or damaging it)."""
    n = ctx.open(readonly=False).reindex()
    if ctx.as_json:
        emit_json({"checkpoints": n})
    else:
        click.echo(f"reindexed {n} checkpoints")
