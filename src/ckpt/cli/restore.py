"""ckpt restore: write a checkpoint out as a standalone .pt or .safetensors file."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import describe, emit_json, human_bytes, json_option, pass_ctx, split_key
from ckpt.cli.output import check_free, load_key, output_path, resolve_key


def checkpoint_info(info) -> dict:  # type: ignore[no-untyped-def]
    return {"id": info.id, "run": info.run, "epoch": info.epoch, "step": info.step, "metrics": dict(info.metrics),
            "content_hash": info.content_hash, "parent": info.parent, "created_at": info.created_at.isoformat()}


def report(ctx, written, info, key) -> None:  # type: ignore[no-untyped-def]
    if ctx.as_json:
        emit_json({"path": written.path, "format": written.format, "checkpoint": info.id,
                   "key": list(key) if key else None, "tensors": written.tensors, "bytes": written.bytes,
                   "notes": written.notes})
        return
    what = f", key {console.safe('/'.join(map(str, key)))}" if key else ""
    click.echo(f"wrote {console.safe(written.path)} ({written.format}, {written.tensors} tensors, "
               f"{human_bytes(written.bytes)}) from {describe(info)}{what}")
    for note in written.notes:
        click.echo(f"note: {console.safe(note)}", err=True)


@click.command("restore", short_help='Write a checkpoint to a .pt/.safetensors file.')
@click.argument("selector")
@click.option("-o", "--output", metavar="PATH", help="File to write (.pt or .safetensors; a directory gets the "
              "default name inside). Default: ./RUN-eEPOCH-ID.pt")
@click.option("--only", "only", metavar="KEY", help="Write one sub-tree, e.g. 'model' or 'optimizer/state' "
              "('/' separates levels).")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@json_option
@pass_ctx
def command(ctx, selector, output, only, force) -> None:  # type: ignore[no-untyped-def]
    """Write a checkpoint out as a file plain PyTorch code can load.

    A .pt file holds the full nested state (torch.save) and loads with torch.load(path,
    weights_only=True). A .safetensors file holds every tensor under its key path joined with "."
    (model.fc.weight), the other values as JSON in its metadata.

    \b
    Examples:
      ckpt restore best:val_acc                       # ./RUN-eEPOCH-ID.pt
      ckpt restore resnet-a@7 -o resnet-a-7.safetensors
      ckpt restore best --only model -o weights.pt --force
    """
    from ckpt import interop  # torch and numpy: only for the commands that move files
    store = ctx.open()
    info = store.get(selector)
    key = resolve_key(store.manifest(info.id).leaves, split_key(only))
    path = output_path(output, info, key, ".pt")
    fmt = interop.file_format(path)
    check_free(path, force)
    with console.progress(f"reading {info.run}@{info.epoch} ({human_bytes(info.logical_size)})"):
        state, key = load_key(store, info, key, split_key(only))
    if fmt == "pt":
        total = interop.count_tensors(state)[1]
        with console.progress(f"writing {path}", total) as advance:
            written = interop.write_pt(state, path, overwrite=force, advance=advance)
    else:
        with console.progress(f"writing {path}"):
            written = interop.write_safetensors(state, path, overwrite=force, info=checkpoint_info(info), key=key)
    report(ctx, written, info, key)
