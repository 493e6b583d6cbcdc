"""ckpt plot: metrics over epochs for one or more runs, each run's best checkpoint marked.

A run trained with ``ckpt.training.fit`` carries its whole metric history in every checkpoint
(``state["history"]``: one record per finished epoch), so the curve is drawn from the run's latest
checkpoint's history: every epoch, pruned ones included. Runs without a history are drawn from the
metrics of their surviving checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import click

from ckpt.cli import console
from ckpt.cli.common import CliError, emit_json, fmt_metric, json_option, pass_ctx
from ckpt.cli.output import safe_component
from ckpt.errors import CheckpointNotFoundError, CkptError, MetricDirectionError
from ckpt.metrics import finite_or_nan


@dataclass
class Series:
    run: str
    metric: str
    source: str = "checkpoints"  # "history": every epoch from the training history
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    kept: list[tuple[float, float]] = field(default_factory=list)  # surviving checkpoints on the curve
    best: tuple[float, float, str] | None = None  # (x, y, checkpoint id)


def load_history(store, info) -> list[dict] | None:  # type: ignore[no-untyped-def]
    """The training history a checkpoint carries (a list of per-epoch records), or None."""
    from ckpt.errors import InvalidArgumentError
    try:
        records = store.load(info.id, key=("history",))
    except (InvalidArgumentError, KeyError, CkptError):
        return None
    if not isinstance(records, list) or not records:
        return None
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) and not isinstance(r.get("epoch"), bool)
               for r in records):
        return None
    return records


def _x(info, x_axis: str) -> float:  # type: ignore[no-untyped-def]
    return float(info.epoch if x_axis == "epoch" or info.step is None else info.step)


def run_series(store, run: str, metrics: tuple[str, ...], mode: str | None, x_axis: str) -> list[Series]:  # type: ignore[no-untyped-def]
    """One series per metric the run has: from its history when it carries one, else its checkpoints."""
    infos = store.list(run=run)
    history = load_history(store, infos[-1]) if infos else None
    out = []
    for metric in metrics:
        points = sorted(((_x(i, x_axis), i.metrics[metric], i.id) for i in infos if metric in i.metrics),
                        key=lambda p: p[0])
        s = Series(run, metric)
        if history is not None and any(metric in r for r in history):
            rows = [r for r in history if metric in r and (x_axis == "epoch" or isinstance(r.get("step"), int))]
            rows.sort(key=lambda r: r["epoch"] if x_axis == "epoch" else r["step"])
            s.source = "history"
            s.x = [float(r["epoch"] if x_axis == "epoch" else r["step"]) for r in rows]
            s.y = [finite_or_nan(r[metric]) for r in rows]
        elif points:
            s.x, s.y = [p[0] for p in points], [finite_or_nan(p[1]) for p in points]
        else:
            continue
        s.kept = [(x, finite_or_nan(y)) for x, y, _ in points]
        try:
            best = store.best(metric, mode=mode, run=run)
            s.best = (_x(best, x_axis), best.metrics[metric], best.id)
        except CheckpointNotFoundError:
            s.best = None
        except MetricDirectionError:
            raise CliError(f"cannot tell whether higher or lower {metric!r} is better; pass --mode max or "
                           f"--mode min, or declare it: ckpt objective {run} {metric} --max") from None
        out.append(s)
    return out


def collect(store, metrics: tuple[str, ...], runs: tuple[str, ...], mode: str | None, x_axis: str) -> list[Series]:  # type: ignore[no-untyped-def]
    """Every (run, metric) series; NaN and missing values leave gaps, never a best."""
    names = list(runs) or [r.name for r in store.runs()]
    out: list[Series] = []
    for run in names:
        series = run_series(store, run, metrics, mode, x_axis)
        if runs and not series:
            raise CliError(f"run {console.safe(run)!r} has no checkpoint or history with "
                           f"{' or '.join(repr(console.safe(m)) for m in metrics)}")
        out += series
    for metric in metrics:
        if not any(s.metric == metric for s in out):
            raise CliError(f"no checkpoint has metric {console.safe(metric)!r}; `ckpt ls` shows the metrics "
                           f"recorded")
    return out


def supported_formats() -> dict[str, str]:
    """Image formats matplotlib writes here: suffix -> description."""
    try:
        import matplotlib
    except ImportError:
        raise CliError("ckpt plot needs matplotlib: pip install 'ckpt[plot]'") from None
    matplotlib.use("Agg", force=True)
    from matplotlib.backend_bases import FigureCanvasBase
    return dict(FigureCanvasBase.get_supported_filetypes())


def check_output(path: str) -> None:
    """An unsupported or missing suffix fails before any work, listing the formats there are."""
    formats = supported_formats()
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in formats:
        what = f"'.{suffix}' is not an image format ckpt plot can write" if suffix else "it has no suffix"
        raise CliError(f"-o {console.safe(path)}: {what}; use one of "
                       f"{', '.join('.' + f for f in sorted(formats))} (e.g. -o curve.png)")


def _is_loss_like(metric: str) -> bool:
    from ckpt.metrics import infer_mode
    return infer_mode(metric) == "min"


def render(series: list[Series], metrics: tuple[str, ...], x_axis: str, path: str, title: str | None) -> None:
    supported_formats()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    runs = list(dict.fromkeys(s.run for s in series))
    low = [m for m in metrics if _is_loss_like(m)]
    twin = bool(low) and len(low) < len(metrics)  # losses on the left, the rest (accuracy...) on the right
    ax2 = ax.twinx() if twin else ax
    xs = [x for s in series for x in s.x]
    mid = (min(xs) + max(xs)) / 2 if xs else 0
    styles = ["-", "--", ":", "-."]
    try:
        for n, s in enumerate(series):
            target = ax if (not twin or s.metric in low) else ax2
            label = s.run if len(metrics) == 1 else (s.metric if len(runs) == 1 else f"{s.run}: {s.metric}")
            color = f"C{n % 10}"
            target.plot(s.x, s.y, linestyle=styles[metrics.index(s.metric) % len(styles)], linewidth=1.5,
                        color=color, label=label, marker="o" if s.source == "checkpoints" else None, markersize=3)
            if s.source == "history" and s.kept:  # the checkpoints still in the store, on the curve
                target.plot([p[0] for p in s.kept], [p[1] for p in s.kept], marker="o", markersize=4,
                            linestyle="none", color=color)
            if s.best is not None:
                bx, by, _ = s.best
                target.plot([bx], [by], marker="*", markersize=16, color=color, markeredgecolor="black",
                            linestyle="none", zorder=5)
                right = bx > mid  # label towards the middle, so it stays inside the axes
                target.annotate(f"best {fmt_metric(by)}", (bx, by), textcoords="offset points",
                                xytext=(-8 if right else 8, 8), ha="right" if right else "left", fontsize=8,
                                color=color)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.08, y=0.1)
        ax.set_xlabel(x_axis)
        if twin:
            ax.set_ylabel(", ".join(low))
            ax2.set_ylabel(", ".join(m for m in metrics if m not in low))
        else:
            ax.set_ylabel(", ".join(metrics))
        ax.set_title(title or f"{', '.join(metrics)} by {x_axis} (★ best checkpoint of each run)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if twin:
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


@click.command("plot", short_help='Plot metrics over epochs, best marked.')
@click.argument("metrics", nargs=-1, required=True, metavar="METRIC...")
@click.option("--run", "runs", multiple=True, help="A run to plot (repeatable). Default: every run with METRIC.")
@click.option("-o", "--output", metavar="PATH", help="Image to write, format by suffix (.png, .svg, .pdf, "
              ".jpg...). Default: ./METRIC.png")
@click.option("--x", "x_axis", type=click.Choice(["epoch", "step"]), default="epoch", show_default=True,
              help="What goes on the horizontal axis.")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Direction of METRIC when its name does not "
              "tell, for marking the best.")
@click.option("--title", help="Plot title.")
@json_option
@pass_ctx
def command(ctx, metrics, runs, output, x_axis, mode, title) -> None:  # type: ignore[no-untyped-def]
    """Plot METRIC (or several) over epochs, one line per run and metric, each best checkpoint starred.

    Runs trained with ckpt.training.fit are drawn from the training history their checkpoints carry:
    every epoch, also those retention has pruned (dots mark the checkpoints still stored). Other
    runs are drawn from their checkpoints' metrics. Losses and other metrics (accuracy...) on one
    chart get an axis each. Needs matplotlib (pip install 'ckpt[plot]'); no display is needed.

    \b
    Examples:
      ckpt plot val_acc -o curve.png
      ckpt plot train_loss val_loss -o curves.png
      ckpt plot val_loss --run resnet-a --run resnet-b --x step -o loss.svg
    """
    metrics = tuple(dict.fromkeys(metrics))
    default = "-".join(safe_component(m) for m in metrics) + ".png"
    path = os.path.abspath(os.path.expanduser(output) if output else default)
    check_output(path)
    store = ctx.open()
    series = collect(store, metrics, runs, mode, x_axis)
    render(series, metrics, x_axis, path, title)
    if ctx.as_json:
        emit_json({"path": path, "metric": metrics[0], "metrics": list(metrics), "series": [
            {"run": s.run, "metric": s.metric, "source": s.source, "x": s.x, "y": s.y,
             "checkpoints": [list(p) for p in s.kept],
             "best": None if s.best is None else {"x": s.best[0], "y": s.best[1], "id": s.best[2]}}
            for s in series]})
        return
    several = len(metrics) > 1
    bests = ", ".join(f"{console.safe(s.run)}{' ' + console.safe(s.metric) if several else ''} "
                      f"{fmt_metric(s.best[1])} at {x_axis} {s.best[0]:g}" for s in series if s.best)
    runs_n = len({s.run for s in series})
    history = sum(1 for s in series if s.source == "history")
    source = f"; {history} of {len(series)} curve(s) from the training history" if history else ""
    click.echo(f"wrote {console.safe(path)} ({runs_n} run(s){source}; best: {bests or '-'})")
