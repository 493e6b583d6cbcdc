"""ckpt import: bring an existing .pt/.pth/.ckpt (Lightning) or .safetensors file into the store."""

from __future__ import annotations

import os

import click

from ckpt import interop
from ckpt.cli import console
from ckpt.cli.common import CliError, describe, emit_json, human_bytes, json_option, pass_ctx
from ckpt.validation import INT_MAX, INT_MIN


def _metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise CliError(f"--metric {text!r}: write NAME=NUMBER, e.g. --metric val_acc=0.91") from None


@click.command("import", short_help='Bring a .pt/.ckpt/.safetensors file in.')
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--run", required=True, help="Run to add the checkpoint to (created if new).")
@click.option("--epoch", type=click.IntRange(INT_MIN, INT_MAX), help="Epoch number. Default: the file's own "
              "(Lightning 'epoch', a top-level 'epoch', or ckpt metadata).")
@click.option("--step", type=click.IntRange(INT_MIN, INT_MAX),
              help="Step. Default: Lightning 'global_step' or the file's own.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME=VALUE",
              help="A metric to record (repeatable). Default: the monitored score of a Lightning "
                   "ModelCheckpoint, or the metrics in a ckpt-written safetensors file.")
@click.option("--tag", "tags", multiple=True, help="Tag the new checkpoint (repeatable).")
@click.option("--parent", metavar="SELECTOR", help="Record lineage from this checkpoint (e.g. the one it was "
              "fine-tuned from). Default: the run's previous checkpoint.")
@json_option
@pass_ctx
def command(ctx, file, run, epoch, step, metrics, tags, parent) -> None:  # type: ignore[no-untyped-def]
    """Import a .pt/.pth/.bin, Lightning .ckpt or .safetensors file as a checkpoint.

    PyTorch files are read with torch.load(weights_only=True) only: a file that needs any other
    pickled Python object is refused, and nothing in it is executed. A Lightning checkpoint is
    stored whole (state_dict, optimizer_states, callbacks, hyper_parameters...); a plain safetensors
    file becomes {"model": tensors, "metadata": its metadata}; a file written by `ckpt restore` comes
    back exactly as it was saved.

    \b
    Examples:
      ckpt import resnet50.pth --run imagenet-baseline --epoch 90
      ckpt import lightning_logs/version_0/checkpoints/last.ckpt --run lit-a
      ckpt import model.safetensors --run hub-base --epoch 0 --metric val_acc=0.76 --tag base
    """
    given = dict(_metric(m) for m in metrics)
    interop.file_format(file)  # an unknown suffix fails before anything is read
    if not ctx.store_location:
        ctx.open()  # the usual "no store given" error, before reading a large file
    with console.progress(f"reading {file} ({human_bytes(os.path.getsize(file)) if os.path.exists(file) else '?'})"):
        imported = interop.read_file(file)
    epoch = imported.epoch if epoch is None else epoch
    if epoch is None:
        raise CliError(f"{file} does not say which epoch it is; pass --epoch N")
    store = ctx.open(readonly=False, create=parent is None)  # only now: a bad file never creates a store
    parent_id = store.get(parent).id if parent else None
    step = imported.step if step is None else step
    values = {k: v for k, v in imported.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    values.update(given)
    before = next((r.status for r in store.runs() if r.name == run), None)
    with console.progress(f"saving to {run}@{epoch}"):
        info = store.save(run, epoch, imported.state, values, step=step, parent=parent_id, tags=tags)
    if before in (None, "completed", "failed"):  # an import is not a training process: keep the run's status
        store.finish_run(run, before or "completed")
    if ctx.as_json:
        doc = info.to_dict()
        doc["source"] = {"path": os.path.abspath(file), "kind": imported.kind}
        emit_json(doc)
        return
    click.echo(f"imported {file} ({imported.kind}) as {describe(info)}: {human_bytes(info.logical_size)}, "
               f"{human_bytes(info.new_bytes)} newly stored")
