"""ckpt show: everything about one checkpoint."""

from __future__ import annotations

import click

from ckpt.cli.common import emit_json, fmt_metric, human_bytes, pass_ctx


@click.command("show")
@click.argument("selector", default="latest")
@click.option("--tensors", is_flag=True, help="List every tensor (key, dtype, shape, bytes).")
@pass_ctx
def command(ctx, selector, tensors) -> None:  # type: ignore[no-untyped-def]
    """Show one checkpoint: run, epoch, metrics, lineage, hash, sizes."""
    store = ctx.open()
    info = store.get(selector)
    m = store.manifest(info.id)
    keys = [("/".join(map(str, p)), m.slots[s]) for p, s in m.leaves]
    shared = 0
    if info.parent:
        try:
            parent_hashes = {s.hash for s in store.manifest(info.parent).slots}
            shared = sum(s.nbytes for s in m.slots if s.hash in parent_hashes)
        except Exception:
            shared = 0
    if ctx.as_json:
        doc = info.to_dict()
        doc["shared_with_parent_bytes"] = shared
        if tensors:
            doc["tensors"] = [{"key": k, "dtype": s.dtype, "shape": list(s.shape), "bytes": s.nbytes,
                               "hash": s.hash} for k, s in keys]
        emit_json(doc)
        return
    click.echo(f"checkpoint  {info.id}")
    click.echo(f"run         {info.run}    epoch {info.epoch}" + (f"    step {info.step}" if info.step is not None else ""))
    click.echo(f"created     {info.created_at.isoformat()}")
    click.echo(f"parent      {info.parent or '-'}")
    click.echo(f"content     {info.content_hash}")
    click.echo(f"size        {human_bytes(info.logical_size)} in {len(keys)} tensors; "
               f"{human_bytes(info.new_bytes)} newly stored; {human_bytes(shared)} shared with parent")
    click.echo(f"tags        {', '.join(info.tags) or '-'}")
    for name, v in info.metrics.items():
        click.echo(f"metric      {name} = {fmt_metric(v)}")
    if tensors:
        for k, s in keys:
            click.echo(f"  {k:60s} {s.dtype:10s} {str(list(s.shape)):20s} {human_bytes(s.nbytes)}")
