"""ckpt import: bring existing .pt/.pth/.ckpt (Lightning) or .safetensors files into the store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import click

from ckpt.cli import console
from ckpt.cli.common import CliError, describe, emit_json, human_bytes, json_option, pass_ctx
from ckpt.validation import INT_MAX, INT_MIN, step_key



def _metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise CliError(f"--metric {console.safe(text)!r}: write NAME=NUMBER, e.g. --metric val_acc=0.91") from None


@dataclass
class Item:
    file: str
    imported: Any
    epoch: int
    step: int | None

    @property
    def key(self) -> tuple[int, int]:
        return self.epoch, step_key(self.step)

    def where(self) -> str:
        return f"epoch {self.epoch}" + ("" if self.step is None else f", step {self.step}")


def _read(files: tuple[str, ...], epoch: int | None, step: int | None) -> list[Item]:
    from ckpt import interop
    items = []
    for file in files:
        size = human_bytes(os.path.getsize(file)) if os.path.exists(file) else "?"
        with console.progress(f"reading {file} ({size})"):
            imported = interop.read_file(file)
        e = imported.epoch if epoch is None else epoch
        if e is None:
            raise CliError(f"{console.safe(file)} does not say which epoch it is; pass --epoch N"
                           + (" (and import it on its own)" if len(files) > 1 else ""))
        items.append(Item(file, imported, e, imported.step if step is None else step))
    items.sort(key=lambda i: i.key)  # lineage follows training order, not the command line's
    for a, b in zip(items, items[1:]):
        if a.key == b.key:
            raise CliError(f"{console.safe(a.file)} and {console.safe(b.file)} are both {a.where()}; import "
                           f"one of them (or each on its own with --epoch/--step)")
    return items


def _existing(store, run: str) -> list[Any]:  # type: ignore[no-untyped-def]
    from ckpt.errors import SelectorError
    try:
        return store.list(run=run)
    except SelectorError:  # a new run
        return []


def _clash_error(run: str, item: Item, other: Any) -> CliError:
    return CliError(f"run {console.safe(run)!r} already has a checkpoint for {item.where()} ({other.short_id}); "
                    f"import {console.safe(item.file)} under another --epoch/--step or --run, or remove that "
                    f"checkpoint first: ckpt rm {other.short_id}")


@click.command("import", short_help='Bring .pt/.ckpt/.safetensors files in.')
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="FILE...")
@click.option("--run", required=True, help="Run to add the checkpoints to (created if new).")
@click.option("--epoch", type=click.IntRange(INT_MIN, INT_MAX), help="Epoch number. Default: the file's own (Lightning 'epoch', a "
              "top-level 'epoch', or ckpt metadata). One FILE only.")
@click.option("--step", type=click.IntRange(INT_MIN, INT_MAX), help="Step. Default: Lightning 'global_step' or the file's own. One FILE only.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME=VALUE",
              help="A metric to record (repeatable; one FILE only). Default: the file's own: the monitored "
                   "score of a Lightning ModelCheckpoint, top-level numbers such as 'loss' or 'val_acc' in a "
                   ".pt/.pth dict, or the metrics in a ckpt-written safetensors file.")
@click.option("--tag", "tags", multiple=True, help="Tag the new checkpoint (repeatable; one FILE only).")
@click.option("--parent", metavar="SELECTOR", help="Record lineage from this checkpoint (e.g. the one it was "
              "fine-tuned from). Default: the run's previous checkpoint.")
@json_option
@pass_ctx
def command(ctx, files, run, epoch, step, metrics, tags, parent) -> None:  # type: ignore[no-untyped-def]
    """Import .pt/.pth/.bin, Lightning .ckpt or .safetensors files as checkpoints of RUN.

    Several files are imported in training order (by epoch, then step), whatever their order on the
    command line, so the newest becomes the run's latest and each one's parent is the one before.
    PyTorch files are read with torch.load(weights_only=True) only: a file that needs any other
    pickled Python object is refused, and nothing in it is executed. A Lightning checkpoint is
    stored whole (state_dict, optimizer_states, callbacks, hyper_parameters...); a plain safetensors
    file becomes {"model": tensors, "metadata": its metadata}; a file written by `ckpt restore` comes
    back exactly as it was saved.

    \b
    Examples:
      ckpt import resnet50.pth --run imagenet-baseline --epoch 90
      ckpt import lightning_logs/version_0/checkpoints/*.ckpt --run lit-a
      ckpt import model.safetensors --run hub-base --epoch 0 --metric val_acc=0.76 --tag base
    """
    from ckpt import interop  # torch and numpy: only for the commands that move files
    if len(files) > 1:
        given = [o for o, v in (("--epoch", epoch), ("--step", step), ("--metric", metrics), ("--tag", tags))
                 if v not in (None, ())]
        if given:
            raise CliError(f"{', '.join(given)} apply to one file; import the files one at a time to give them")
    extra = dict(_metric(m) for m in metrics)
    for file in files:
        interop.file_format(file)  # an unknown suffix fails before anything is read
    if not ctx.store_location:
        ctx.open()  # the usual "no store given" error, before reading a large file
    items = _read(files, epoch, step)
    store = ctx.open(readonly=False, create=parent is None)  # only now: a bad file never creates a store
    parent_id = store.get(parent).id if parent else None
    existing = _existing(store, run)
    by_key = {(i.epoch, step_key(i.step)): i for i in existing}
    for item in items:
        if item.key in by_key:
            raise _clash_error(run, item, by_key[item.key])
    later = [i for i in existing if (i.epoch, step_key(i.step)) > items[0].key]
    if later and parent is None:
        newest = max(later, key=lambda i: (i.epoch, step_key(i.step)))
        click.echo(f"note: run {console.safe(run)!r} already has later checkpoints (up to {describe(newest)}); "
                   f"the imported ones become its latest", err=True)
    before = next((r.status for r in store.runs() if r.name == run), None)
    from ckpt.errors import DuplicateCheckpointError
    saved = []
    for n, item in enumerate(items):
        values = {k: v for k, v in item.imported.metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        values.update(extra)
        if n == 0 and parent_id is None and existing:  # lineage by training order, not by commit order
            earlier = [i for i in existing if (i.epoch, step_key(i.step)) < item.key]
            if earlier:
                parent_id = max(earlier, key=lambda i: (i.epoch, step_key(i.step))).id
        with console.progress(f"saving {item.file} to {run}@{item.epoch}"):
            try:
                info = store.save(run, item.epoch, item.imported.state, values, step=item.step,
                                  parent=parent_id if n == 0 else None, tags=tags)
            except DuplicateCheckpointError:  # saved by someone else meanwhile
                clash = next(i for i in store.list(run=run) if (i.epoch, i.step) == (item.epoch, item.step))
                raise _clash_error(run, item, clash) from None
        saved.append((item, info))
    if before in (None, "completed", "failed"):  # an import is not a training process: keep the run's status
        store.finish_run(run, before or "completed")
    if ctx.as_json:
        docs = []
        for item, info in saved:
            doc = info.to_dict()
            doc["source"] = {"path": os.path.abspath(item.file), "kind": item.imported.kind}
            docs.append(doc)
        emit_json(docs[0] if len(docs) == 1 else docs)
        return
    for item, info in saved:
        click.echo(f"imported {console.safe(item.file)} ({item.imported.kind}) as {describe(info)}: "
                   f"{human_bytes(info.logical_size)}, {human_bytes(info.new_bytes)} newly stored")
