"""ckpt verify: check that the index, manifests and packs agree."""

from __future__ import annotations

import sys

import click

from ckpt.cli.common import emit_json, human_bytes, pass_ctx


@click.command("verify")
@click.option("--full", is_flag=True, help="Also re-read and re-hash every tensor.")
@pass_ctx
def command(ctx, full) -> None:  # type: ignore[no-untyped-def]
    """Check the store; exit code 1 when anything is wrong."""
    report = ctx.open().verify(full=full)
    if ctx.as_json:
        emit_json({"ok": report.ok, "checkpoints": report.checkpoints, "packs": report.packs,
                   "tensors_checked": report.tensors_checked, "bytes_checked": report.bytes_checked,
                   "problems": [vars(p) for p in report.problems]})
    else:
        for p in report.problems:
            click.echo(f"PROBLEM {p}")
        checked = f", re-hashed {report.tensors_checked} tensors ({human_bytes(report.bytes_checked)})" if full else ""
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.checkpoints} checkpoints, {report.packs} packs"
                   f"{checked}, {len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(1)
