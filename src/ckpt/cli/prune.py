"""ckpt prune: apply a retention policy and free the space it releases."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import CliError, emit_json, fmt_metric, human_bytes, json_option, pass_ctx
from ckpt.validation import INT_MAX, step_key



def parse_keep_best(text: str | None) -> tuple[int | None, str | None]:
    """``K`` or ``K:METRIC``."""
    if text is None:
        return None, None
    count, sep, metric = text.partition(":")
    try:
        k = int(count)
        if k < 0:
            raise ValueError
    except ValueError:
        raise CliError(f"--keep-best {text!r}: write K or K:METRIC, e.g. --keep-best 3:val_acc") from None
    if sep and not metric:
        raise CliError(f"--keep-best {text!r}: the metric after ':' is missing")
    return k, metric or None


@click.command("prune", short_help='Apply a retention policy, free space.')
@click.option("--keep-last", type=click.IntRange(0, INT_MAX), metavar="N",
              help="Keep each run's N newest checkpoints.")
@click.option("--keep-best", metavar="K[:METRIC]", help="Keep each run's K best by METRIC (default: the run's "
              "objective).")
@click.option("--keep-every", type=click.IntRange(1, INT_MAX), metavar="N", help="Keep every checkpoint whose "
              "epoch is a multiple of N.")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Direction of METRIC when its name does not "
              "tell (acc/f1/auc... max; loss/error... min).")
@click.option("--run", help="Only this run (default: every run, each on its own).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed and the bytes freed; change nothing.")
@json_option
@pass_ctx
def command(ctx, keep_last, keep_best, keep_every, mode, run, dry_run) -> None:  # type: ignore[no-untyped-def]
    """Remove checkpoints a retention policy does not keep, and free their space.

    Never removed, whatever the policy: tagged checkpoints, each run's latest and best, and
    checkpoints another run was resumed or fine-tuned from. Nothing goes before a newer checkpoint
    is committed. Run with --dry-run first.

    \b
    Examples:
      ckpt prune --keep-last 3 --keep-best 2:val_acc --dry-run
      ckpt prune --run resnet-a --keep-every 10 --keep-last 2
    """
    k_best, metric = parse_keep_best(keep_best)
    if keep_last is None and k_best is None and keep_every is None:
        raise CliError("say what to keep: --keep-last N, --keep-best K[:METRIC] and/or --keep-every N")
    store = ctx.open(readonly=dry_run)
    plan = store.prune(keep_last=keep_last, keep_best=k_best, keep_every=keep_every, metric=metric, mode=mode,
                       run=run, dry_run=dry_run)
    if ctx.as_json:
        removed_why = getattr(plan, "removed_reasons", {})
        emit_json({"dry_run": dry_run, "bytes_freed": plan.bytes_freed,
                   "removed": [{**i.to_dict(), "reason": removed_why.get(i.id)} for i in plan.remove],
                   "kept": [{**i.to_dict(), "reasons": plan.reasons.get(i.id, [])} for i in plan.keep]})
        return
    console.show(render(plan, dry_run, metric))
    verb = "would remove" if dry_run else "removed"
    freed = "would free" if dry_run else "freed"
    click.echo(f"{verb} {len(plan.remove)} of {len(plan.keep) + len(plan.remove)} checkpoint(s), {freed} "
               f"{human_bytes(plan.bytes_freed)}")
    if dry_run:
        click.echo("(dry run: nothing changed)")


def reasons(items: list[str]) -> str:
    """``latest; last 3; best by val_acc, val_loss``: one "best by" for all the metrics it is best by."""
    best = [r[len("best by "):] for r in items if r.startswith("best by ")]
    out: list[str] = []
    for r in items:
        if r.startswith("best by "):
            if best:
                out.append("best by " + ", ".join(best))
                best = []
        else:
            out.append(r)
    return "; ".join(out)


def render(plan, dry_run: bool, metric: str | None) -> console.FitTable:  # type: ignore[no-untyped-def]
    """keep/remove and why, first and last on each row, never dropped; the policy's metric before the others."""
    metric_names = list(dict.fromkeys(m for i in plan.keep + plan.remove for m in i.metrics))
    if metric in metric_names:
        metric_names.remove(metric)
        metric_names.insert(0, metric)
    C = console.Column
    t = console.FitTable(
        C("action"), C("id", min_width=8, cut="prefix"), C("run", min_width=10), C("epoch", right=True),
        C("step", right=True, priority=2),
        *[C(console.safe(m), right=True, priority=(1 if m == metric else 4) + n / 100)
          for n, m in enumerate(metric_names)],
        C("why", min_width=26))
    removed_why = getattr(plan, "removed_reasons", {})
    rows = sorted([(i, True) for i in plan.keep] + [(i, False) for i in plan.remove],
                  key=lambda r: (r[0].run, r[0].epoch, step_key(r[0].step)))
    for info, kept in rows:
        why = reasons(plan.reasons.get(info.id, [])) if kept else removed_why.get(info.id, "")
        t.add_row("keep" if kept else ("remove" if dry_run else "removed"), info.short_id, info.run,
                  str(info.epoch), "-" if info.step is None else str(info.step),
                  *[fmt_metric(info.metrics.get(m)) for m in metric_names], why)
    return t
