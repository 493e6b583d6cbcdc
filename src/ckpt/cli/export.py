"""ckpt export: just the weights, as one flat file for inference."""

from __future__ import annotations

import click

from ckpt.cli import console, weights
from ckpt.cli.common import human_bytes, json_option, pass_ctx, split_key
from ckpt.cli.output import check_free, load_key, output_path, resolve_key
from ckpt.cli.restore import checkpoint_info, report


@click.command("export", short_help='Write just the weights, for inference.')
@click.argument("selector")
@click.option("-o", "--output", metavar="PATH", help="File to write: .safetensors (default) or .pt (a flat "
              "dict of tensors). Default: ./RUN-eEPOCH-ID-KEY.safetensors")
@click.option("--only", "only", metavar="KEY", help="The sub-tree holding the weights. Default: 'model' when "
              "the checkpoint has one (Lightning: 'state_dict'), a Hugging Face Trainer checkpoint's model "
              "files, a distributed checkpoint's 'model.' tensors; else every tensor.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@json_option
@pass_ctx
def command(ctx, selector, output, only, force) -> None:  # type: ignore[no-untyped-def]
    """Write just the weights (tensors, no optimizer or other values) for inference.

    Tensor names are key paths below --only joined with ".", so a model's state dict comes out
    with its usual names: model.load_state_dict(safetensors.torch.load_file(PATH)). Checkpoints
    stored by the Hugging Face callback give their model files' tensors, distributed (DCP)
    checkpoints whole tensors assembled from their shards. A checkpoint whose weights cannot be
    told from its optimizer state is refused with the --only choices.

    \b
    Examples:
      ckpt export best:val_acc -o model.safetensors
      ckpt export resnet-a@7 --only ema -o ema.safetensors
      ckpt export latest -o weights.pt
    """
    from ckpt import interop  # torch and numpy: only for the commands that move files
    store = ctx.open()
    info = store.get(selector)
    parts = split_key(only)
    with store.open(info.id) as lazy:
        structure = lazy.structure()
        fmt = weights.checkpoint_format(structure)
        if fmt == weights.DCP_FORMAT:
            chosen, prefix = weights.dcp_select(structure, parts)
            key = tuple(prefix.split(".")) if prefix else None
            read = lambda: weights.dcp_weights(lazy, chosen, prefix)  # noqa: E731
        elif fmt == weights.HF_FORMAT and parts is None:
            files = weights.hf_weight_files(structure)
            key = ("model",)  # how the file names it and an import files it: the model's weights
            read = lambda: weights.hf_weights(lazy, structure, files)  # noqa: E731
        else:
            leaves = lazy.manifest.leaves
            key = resolve_key(leaves, parts) if parts is not None else weights.default_key(leaves)
            read = None
        path = output_path(output, info, key, ".safetensors")
        file_format = interop.file_format(path)
        check_free(path, force)
        if read is not None:
            state = _read(info, read)
        else:
            state, key = _read(info, lambda: load_key(store, info, key, parts))
        with console.progress(f"writing {path}"):
            if file_format == "safetensors":
                written = interop.write_safetensors(state, path, overwrite=force, weights_only=True,
                                                    info=checkpoint_info(info), key=key)
            else:
                written = interop.write_weights_pt(state, path, overwrite=force)
    report(ctx, written, info, key)


def _read(info, work):  # type: ignore[no-untyped-def]
    with console.progress(f"reading {console.safe(info.run)}@{info.epoch} ({human_bytes(info.logical_size)})"):
        return work()
