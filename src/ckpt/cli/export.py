"""ckpt export: just the weights, as one flat file for inference."""

from __future__ import annotations

import click

from ckpt import interop
from ckpt.cli import console
from ckpt.cli.common import human_bytes, json_option, pass_ctx, split_key
from ckpt.cli.output import check_free, default_export_key, load_key, output_path, resolve_key
from ckpt.cli.restore import checkpoint_info, report


@click.command("export", short_help='Write just the weights, for inference.')
@click.argument("selector")
@click.option("-o", "--output", metavar="PATH", help="File to write: .safetensors (default) or .pt (a flat "
              "dict of tensors). Default: ./RUN-eEPOCH-ID-KEY.safetensors")
@click.option("--only", "only", metavar="KEY", help="The sub-tree holding the weights. Default: 'model' when "
              "the checkpoint has one (Lightning: 'state_dict'), else every tensor.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@json_option
@pass_ctx
def command(ctx, selector, output, only, force) -> None:  # type: ignore[no-untyped-def]
    """Write just the weights (tensors, no optimizer or other values) for inference.

    Tensor names are key paths below --only joined with ".", so a model's state dict comes out
    with its usual names: model.load_state_dict(safetensors.torch.load_file(PATH)).

    \b
    Examples:
      ckpt export best:val_acc -o model.safetensors
      ckpt export resnet-a@7 --only ema -o ema.safetensors
      ckpt export latest -o weights.pt
    """
    store = ctx.open()
    info = store.get(selector)
    leaves = store.manifest(info.id).leaves
    key = resolve_key(leaves, split_key(only)) if only is not None else default_export_key(leaves)
    path = output_path(output, info, key, ".safetensors")
    fmt = interop.file_format(path)
    check_free(path, force)
    with console.progress(f"reading {info.run}@{info.epoch} ({human_bytes(info.logical_size)})"):
        state, key = load_key(store, info, key, split_key(only))
    with console.progress(f"writing {path}"):
        if fmt == "safetensors":
            written = interop.write_safetensors(state, path, overwrite=force, weights_only=True,
                                                info=checkpoint_info(info), key=key)
        else:
            written = interop.write_weights_pt(state, path, overwrite=force)
    report(ctx, written, info, key)
