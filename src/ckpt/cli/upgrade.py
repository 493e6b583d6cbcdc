"""ckpt upgrade: rewrite a store's format-1 manifests as format 2."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import emit_json, json_option, pass_ctx


@click.command("upgrade", short_help='Move an old store to the current format.')
@click.option("--dry-run", is_flag=True, help="Only say how many manifests would be rewritten.")
@json_option
@pass_ctx
def command(ctx, dry_run) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the store's format-1 manifests as format 2 (same checkpoints, ids and packs).

    Format-1 stores stay readable and every new save writes format 2, so this is optional: it makes
    listing and loading the old checkpoints faster. It holds the store's exclusive lock (saves wait) and
    never leaves a checkpoint unreadable, even if interrupted.

    \b
    Examples:
      ckpt upgrade --dry-run
      ckpt upgrade
    """
    store = ctx.open(readonly=dry_run)
    with console.progress("rewriting format-1 manifests"):
        report = store.upgrade(dry_run=dry_run)
    if ctx.as_json:
        emit_json({"upgraded": report.upgraded, "skipped": [{"id": c, "reason": r} for c, r in report.skipped],
                   "dry_run": dry_run})
        return
    verb = "would rewrite" if dry_run else "rewrote"
    click.echo(f"{verb} {len(report.upgraded)} format-1 manifest(s) as format 2")
    for cid, why in report.skipped:
        click.echo(f"skipped {cid[:12]}: {console.safe(why)}", err=True)
