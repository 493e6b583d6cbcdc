"""ckpt plot: a metric over epochs for one or more runs, each run's best checkpoint marked."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import click

from ckpt.cli.common import CliError, emit_json, fmt_metric, json_option, pass_ctx
from ckpt.cli.output import safe_component
from ckpt.errors import CheckpointNotFoundError, MetricDirectionError


@dataclass
class Series:
    run: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    best: tuple[float, float, str] | None = None  # (x, y, checkpoint id)


def collect(store, metric: str, runs: tuple[str, ...], mode: str | None, x_axis: str) -> list[Series]:  # type: ignore[no-untyped-def]
    """One series per run that has the metric; NaN and missing values leave gaps, never a best."""
    names = list(runs) or [r.name for r in store.runs()]
    out = []
    for run in names:
        infos = store.list(run=run)
        points = [(float(i.epoch if x_axis == "epoch" else (i.step if i.step is not None else i.epoch)),
                   i.metrics[metric], i.id) for i in infos if metric in i.metrics]
        if not points:
            if runs:
                raise CliError(f"run {run!r} has no checkpoint with metric {metric!r}")
            continue
        points.sort(key=lambda p: p[0])
        s = Series(run, [p[0] for p in points], [p[1] if math.isfinite(p[1]) else math.nan for p in points])
        try:
            best = store.best(metric, mode=mode, run=run)
            s.best = next(((x, y, cid) for x, y, cid in points if cid == best.id), None)
        except CheckpointNotFoundError:
            s.best = None
        except MetricDirectionError:
            raise CliError(f"cannot tell whether higher or lower {metric!r} is better; pass --mode max or "
                           f"--mode min") from None
        out.append(s)
    if not out:
        raise CliError(f"no checkpoint has metric {metric!r}; `ckpt ls` shows the metrics recorded")
    return out


def render(series: list[Series], metric: str, x_axis: str, path: str, title: str | None) -> None:
    try:
        import matplotlib
    except ImportError:
        raise CliError("ckpt plot needs matplotlib: pip install 'ckpt[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    xs = [x for s in series for x in s.x]
    mid = (min(xs) + max(xs)) / 2
    try:
        for s in series:
            (line,) = ax.plot(s.x, s.y, marker="o", markersize=3, linewidth=1.5, label=s.run)
            if s.best is not None:
                bx, by, _ = s.best
                ax.plot([bx], [by], marker="*", markersize=16, color=line.get_color(),
                        markeredgecolor="black", linestyle="none", zorder=5)
                right = bx > mid  # label towards the middle, so it stays inside the axes
                ax.annotate(f"best {fmt_metric(by)}", (bx, by), textcoords="offset points",
                            xytext=(-8 if right else 8, 8), ha="right" if right else "left", fontsize=8,
                            color=line.get_color())
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.08, y=0.1)
        ax.set_xlabel(x_axis)
        ax.set_ylabel(metric)
        ax.set_title(title or f"{metric} by {x_axis} (★ best checkpoint of each run)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


@click.command("plot", short_help='Plot a metric over epochs, best marked.')
@click.argument("metric")
@click.option("--run", "runs", multiple=True, help="A run to plot (repeatable). Default: every run with METRIC.")
@click.option("-o", "--output", metavar="PATH", help="Image to write (.png, .svg, .pdf). Default: ./METRIC.png")
@click.option("--x", "x_axis", type=click.Choice(["epoch", "step"]), default="epoch", show_default=True,
              help="What goes on the horizontal axis.")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Direction of METRIC when its name does not "
              "tell, for marking the best.")
@click.option("--title", help="Plot title.")
@json_option
@pass_ctx
def command(ctx, metric, runs, output, x_axis, mode, title) -> None:  # type: ignore[no-untyped-def]
    """Plot METRIC over epochs, one line per run, each run's best checkpoint starred.

    Needs matplotlib (pip install 'ckpt[plot]'); no display is needed.

    \b
    Examples:
      ckpt plot val_acc -o curve.png
      ckpt plot val_loss --run resnet-a --run resnet-b --x step -o loss.svg
    """
    store = ctx.open()
    series = collect(store, metric, runs, mode, x_axis)
    path = os.path.abspath(os.path.expanduser(output) if output else f"{safe_component(metric)}.png")
    render(series, metric, x_axis, path, title)
    if ctx.as_json:
        emit_json({"path": path, "metric": metric, "series": [
            {"run": s.run, "x": s.x, "y": s.y, "best": None if s.best is None else
             {"x": s.best[0], "y": s.best[1], "id": s.best[2]}} for s in series]})
        return
    bests = ", ".join(f"{s.run} {fmt_metric(s.best[1])} at {x_axis} {s.best[0]:g}" for s in series if s.best)
    click.echo(f"wrote {path} ({len(series)} run(s); best: {bests or '-'})")
