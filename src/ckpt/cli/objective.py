"""ckpt objective: declare (or show) what "best" means for a run."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import CliError, describe, emit_json, fmt_metric, json_option, pass_ctx


def _run_info(store, run: str):  # type: ignore[no-untyped-def]
    store.list(run=run)  # an unknown run fails here, naming the runs there are
    return next(r for r in store.runs() if r.name == run)


def _metrics(store, run: str) -> list[str]:  # type: ignore[no-untyped-def]
    return list(dict.fromkeys(m for i in store.list(run=run) for m in i.metrics))


@click.command("objective", short_help='Declare what "best" means for a run.')
@click.argument("run")
@click.argument("metric", required=False)
@click.option("--max", "mode", flag_value="max", help="Higher METRIC is better.")
@click.option("--min", "mode", flag_value="min", help="Lower METRIC is better.")
@json_option
@pass_ctx
def command(ctx, run, metric, mode) -> None:  # type: ignore[no-untyped-def]
    """Declare RUN's objective: the METRIC that `best`, `ckpt restore best` and `prune` go by.

    The direction comes from --max / --min, else from the metric's name (acc, f1, auc... higher is
    better; loss, error, perplexity... lower). METRIC must be one the run's checkpoints record.
    Without METRIC, show the run's objective.

    \b
    Examples:
      ckpt objective resnet-a val_acc
      ckpt objective resnet-a bleu4 --max
      ckpt objective resnet-a
    """
    safe = console.safe
    if metric is None:
        if mode is not None:
            raise CliError("--max/--min need a METRIC: ckpt objective RUN METRIC --max")
        store = ctx.open()
        info = _run_info(store, run)
        names = _metrics(store, run)
        if ctx.as_json:
            emit_json({"run": run, "objective": info.objective, "mode": info.mode, "best_value": info.best_value,
                       "metrics": names})
            return
        if info.objective:
            click.echo(f"{safe(run)}: objective {safe(info.objective)} ({info.mode or 'max'}), best "
                       f"{fmt_metric(info.best_value)}")
        else:
            hint = f"ckpt objective {safe(run)} {safe(names[0]) if len(names) == 1 else 'METRIC'}"
            click.echo(f"{safe(run)} declares no objective (metrics: {console.join_safe(names) or 'none'}); "
                       f"declare one with `{hint}`")
        return
    store = ctx.open(readonly=False)
    _run_info(store, run)
    names = _metrics(store, run)
    if names and metric not in names:  # a typo would leave every `best` of the run failing
        raise CliError(f"no checkpoint of run {safe(run)!r} records {safe(metric)!r}; its metrics are "
                       f"{console.join_safe(names)}")
    from ckpt.errors import MetricDirectionError
    try:
        store.set_objective(run, metric, mode)
    except MetricDirectionError:
        raise CliError(f"cannot tell whether higher or lower {safe(metric)!r} is better: add --max or --min") from None
    info = _run_info(store, run)
    from ckpt.errors import CheckpointNotFoundError
    try:
        best = store.best(run=run)
    except CheckpointNotFoundError:  # no finite value yet: nothing to show
        best = None
    if ctx.as_json:
        emit_json({"run": run, "objective": info.objective, "mode": info.mode,
                   "best": None if best is None else best.to_dict()})
        return
    click.echo(f"{safe(run)}: objective {safe(metric)} ({info.mode})" +
               (f"; best is {describe(best)} with {fmt_metric(best.metrics.get(metric))}" if best else ""))
