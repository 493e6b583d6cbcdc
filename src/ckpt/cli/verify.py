"""ckpt verify: check that the index, manifests and packs agree."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import emit_json, human_bytes, json_option, pass_ctx


@click.command("verify", short_help='Check the store (exit 1 on damage).')
@click.option("--full", is_flag=True, help="Also re-read and re-hash every tensor.")
@json_option
@pass_ctx
def command(ctx, full) -> None:  # type: ignore[no-untyped-def]
    """Check the store; exit code 1, with every problem listed, when anything is wrong.

    Without --full: every indexed checkpoint has a valid manifest and every tensor is where its
    manifest says. With --full every byte is re-read and re-hashed.

    \b
    Examples:
      ckpt verify
      ckpt verify --full --json
    """
    store = ctx.open()
    with console.progress("verifying" + (" and re-hashing every tensor" if full else "")):
        report = store.verify(full=full)
    if ctx.as_json:
        emit_json({"ok": report.ok, "checkpoints": report.checkpoints, "packs": report.packs,
                   "tensors_checked": report.tensors_checked, "bytes_checked": report.bytes_checked,
                   "problems": [vars(p) for p in report.problems]})
    else:
        for p in report.problems:
            click.echo(f"PROBLEM {console.safe(p)}")
        checked = f", re-hashed {report.tensors_checked} tensors ({human_bytes(report.bytes_checked)})" if full else ""
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.checkpoints} checkpoints, {report.packs} packs"
                   f"{checked}, {len(report.problems)} problem(s)")
    if not report.ok:
        click.get_current_context().exit(1)
