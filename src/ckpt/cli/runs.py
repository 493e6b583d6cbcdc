"""ckpt runs: every run with its status, objective, best value and latest epoch."""

from __future__ import annotations

import click
from rich.text import Text

from ckpt.cli import console
from ckpt.cli.common import age, emit_json, fmt_metric, json_option, pass_ctx

STATUS_STYLE = {"running": "yellow", "completed": "green", "failed": "red", "interrupted": "magenta",
                "crashed": "bold red"}
#: Every status ``runs`` shows: the stored ones (store.finish_run) and "crashed" (running, process gone).
STATUSES = tuple(STATUS_STYLE)


@click.command("runs", short_help='Runs with status, objective and best value.')
@click.option("--status", type=click.Choice(STATUSES), multiple=True,
              help="Only runs with this status (repeatable): " + ", ".join(STATUSES) + ".")
@json_option
@pass_ctx
def command(ctx, status) -> None:  # type: ignore[no-untyped-def]
    """List runs: status, objective, best value, latest epoch.

    Statuses: running, completed, failed, interrupted (stopped by Ctrl-C or a signal), and crashed
    (marked running, but its saving process died without finishing).

    \b
    Examples:
      ckpt runs
      ckpt runs --status crashed --status failed
      ckpt runs --json
    """
    runs = ctx.open().runs()
    if status:
        runs = [r for r in runs if r.status in status]
    if ctx.as_json:
        emit_json([{"name": r.name, "status": r.status, "objective": r.objective, "mode": r.mode,
                    "best_value": r.best_value, "latest_epoch": r.latest_epoch, "checkpoints": r.checkpoints,
                    "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
                    "host": r.host, "pid": r.pid} for r in runs])
        return
    if not runs:
        click.echo("no runs" + (" with that status" if status else " in this store yet"), err=True)
        return
    C = console.Column
    t = console.FitTable(C("run", min_width=10), C("status"), C("objective", priority=3, min_width=12),
                         C("best", right=True, priority=1), C("latest epoch", right=True),
                         C("checkpoints", right=True, priority=2),
                         C("updated", right=True, priority=console.DROP_EARLY))
    for r in runs:
        objective = f"{r.objective} ({r.mode or 'max'})" if r.objective else "-"
        t.add_row(r.name, Text(console.safe(r.status), style=STATUS_STYLE.get(r.status, "")), objective,
                  fmt_metric(r.best_value), "-" if r.latest_epoch is None else str(r.latest_epoch), str(r.checkpoints),
                  age(r.updated_at))
    console.show(t)
