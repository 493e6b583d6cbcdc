"""Per-epoch metric history: kept in every checkpoint (so pruning never loses it) and drawable.

    hist = History.from_store(store, "mlp")       # from the run's latest checkpoint
    hist["val_loss"]                              # [0.69, 0.52, ...], one value per epoch
    plot_history(hist, "curves.png")              # matplotlib, no display needed
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from ckpt.errors import InvalidArgumentError


class History:
    """A list of records, one per finished epoch: {"epoch": e, "step": s, "train_loss": ..., ...}."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records: list[dict[str, Any]] = [dict(r) for r in records or []]

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, metric: str) -> list[float]:
        """The values of ``metric`` by epoch (NaN where an epoch lacks it)."""
        if not any(metric in r for r in self.records):
            raise KeyError(f"no epoch recorded {metric!r}; the history has {self.metrics()}")
        return [float(r.get(metric, math.nan)) for r in self.records]

    @property
    def epochs(self) -> list[int]:
        return [int(r["epoch"]) for r in self.records]

    def metrics(self) -> list[str]:
        names = dict.fromkeys(k for r in self.records for k in r if k not in ("epoch", "step"))
        return list(names)

    def state_dict(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.records = [dict(r) for r in state]

    @classmethod
    def from_store(cls, store: Any, run: str, selector: str | None = None) -> "History":
        """The history saved in a run's checkpoint (its latest by default)."""
        return cls(store.load(selector or f"{run}:latest", key="history"))

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, metrics={self.metrics()})"


def plot_history(history: History, path: str, metrics: Sequence[str] | None = None, *,
                 best_epoch: int | None = None, stopped_epoch: int | None = None, title: str | None = None) -> str:
    """Draw losses on one axis and the other metrics on a second one; write a PNG (or any format
    matplotlib knows from the file name). Uses the Agg backend, so no display is needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not len(history):
        raise InvalidArgumentError("the history is empty: nothing to plot")
    names = list(metrics) if metrics is not None else [m for m in history.metrics() if m != "lr"]
    losses = [m for m in names if "loss" in m]
    others = [m for m in names if m not in losses]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    x = history.epochs
    for m in losses:
        ax.plot(x, history[m], marker="o", ms=3, label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" if losses else "value")
    handles, labels = ax.get_legend_handles_labels()
    if others:
        ax2 = ax.twinx() if losses else ax
        for i, m in enumerate(others):
            ax2.plot(x, history[m], marker="s", ms=3, linestyle="--", color=f"C{len(losses) + i}", label=m)
        ax2.set_ylabel(", ".join(others))
        if ax2 is not ax:
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        else:
            handles, labels = ax.get_legend_handles_labels()
    if best_epoch is not None:
        ax.axvline(best_epoch, color="green", linewidth=1, alpha=0.7)
        handles.append(ax.lines[-1])
        labels.append(f"best (epoch {best_epoch})")
    if stopped_epoch is not None:
        ax.axvline(stopped_epoch, color="red", linewidth=1, linestyle=":", alpha=0.7)
        handles.append(ax.lines[-1])
        labels.append(f"early stop (epoch {stopped_epoch})")
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
