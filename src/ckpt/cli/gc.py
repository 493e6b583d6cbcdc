"""ckpt gc: remove packs no checkpoint refers to."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import emit_json, human_bytes, json_option, pass_ctx


@click.command("gc", short_help='Delete data nothing refers to.')
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True, metavar="SECONDS",
              help="Leave unreferenced packs younger than this alone (a save may be writing them).")
@json_option
@pass_ctx
def command(ctx, dry_run, grace) -> None:  # type: ignore[no-untyped-def]
    """Delete data no checkpoint refers to any more (after `ckpt rm`), and dead writers' temp files.

    Safe while other processes save: a save pins the packs it uses before writing them, and packs
    younger than --grace are never touched.

    \b
    Examples:
      ckpt gc --dry-run
      ckpt gc
      ckpt gc --grace 0      # when no save is running
    """
    store = ctx.open(readonly=dry_run)
    with console.progress("collecting unreferenced packs" + (" (dry run)" if dry_run else "")):
        report = store.gc(dry_run=dry_run, grace_seconds=grace)
    if ctx.as_json:
        emit_json({"dry_run": dry_run, "packs": report.packs, "temp_files": report.temp_files,
                   "bytes_freed": report.bytes_freed})
        return
    verb = "would remove" if dry_run else "removed"
    for p in report.packs:
        click.echo(f"{verb} pack {console.safe(p)}")
    for f in report.temp_files:
        click.echo(f"{verb} temp file {console.safe(f)}")
    click.echo(f"{verb} {len(report.packs)} pack(s) and {len(report.temp_files)} temp file(s), "
               f"{'would free' if dry_run else 'freed'} {human_bytes(report.bytes_freed)}")
