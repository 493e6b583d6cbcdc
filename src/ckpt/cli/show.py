"""ckpt show: everything about one checkpoint."""

from __future__ import annotations

import click

from ckpt.cli import console
from ckpt.cli.common import describe, emit_json, fmt_metric, human_bytes, json_option, pass_ctx
from ckpt.errors import CkptError

MAX_LINEAGE = 10


def _lineage(store, info):  # type: ignore[no-untyped-def]
    """Ancestors, nearest first (at most MAX_LINEAGE), and whether the chain goes on or is broken."""
    chain, cur = [], info
    while cur.parent and len(chain) < MAX_LINEAGE:
        try:
            cur = store.get(cur.parent)
        except CkptError:
            return chain, f"parent {cur.parent[:12]} was deleted"
        chain.append(cur)
    return chain, ("..." if cur.parent else "")


@click.command("show", short_help='Everything about one checkpoint.')
@click.argument("selector", default="latest")
@click.option("--tensors", is_flag=True, help="List every tensor (key, dtype, shape, bytes).")
@json_option
@pass_ctx
def command(ctx, selector, tensors) -> None:  # type: ignore[no-untyped-def]
    """Show one checkpoint: run, epoch, metrics, lineage, hash, sizes, what it shares with its parent.

    \b
    Examples:
      ckpt show best:val_acc
      ckpt show resnet-a@7 --tensors
      ckpt show latest~2 --json
    """
    store = ctx.open()
    info = store.get(selector)
    m = store.manifest(info.id)
    keys = [("/".join(map(str, p)), m.slots[s]) for p, s in m.leaves]
    shared = shared_n = 0
    if info.parent:
        try:
            parent_hashes = {s.hash for s in store.manifest(info.parent).slots}
            hit = [s for s in m.slots if s.hash in parent_hashes]
            shared, shared_n = sum(s.nbytes for s in hit), len(hit)
        except CkptError:
            pass
    chain, chain_end = _lineage(store, info)
    children = [i for i in store.list() if i.parent == info.id]
    if ctx.as_json:
        doc = info.to_dict()
        doc.update(shared_with_parent_bytes=shared, shared_with_parent_tensors=shared_n, tensor_count=len(keys),
                   packs=sorted(m.packs), ancestors=[a.id for a in chain], children=[c.id for c in children])
        if tensors:
            doc["tensors"] = [{"key": k, "dtype": s.dtype, "shape": list(s.shape), "bytes": s.nbytes,
                               "hash": s.hash} for k, s in keys]
        emit_json(doc)
        return
    safe = console.safe
    parent = "-"
    if info.parent:
        parent = describe(chain[0]) if chain else f"{safe(info.parent[:12])} (deleted)"
    lineage = " <- ".join([f"{safe(info.run)}@{info.epoch}"] + [f"{safe(a.run)}@{a.epoch}" for a in chain])
    lines = [
        ("checkpoint", info.id),
        ("run", f"{safe(info.run)}    epoch {info.epoch}" + (f"    step {info.step}" if info.step is not None else "")),
        ("created", info.created_at.isoformat(timespec="seconds")),
        ("parent", parent),
        ("lineage", lineage + (f" <- {chain_end}" if chain_end else "")),
        ("children", ", ".join(describe(c) for c in children) or "-"),
        ("content", safe(info.content_hash)),
        ("size", f"{human_bytes(info.logical_size)} in {len(keys)} tensors ({len(m.slots)} distinct), "
                 f"{len(m.packs)} pack(s)"),
        ("stored", f"{human_bytes(info.new_bytes)} newly written by this save"),
        ("shared", f"{human_bytes(shared)} ({shared_n} tensors) identical to its parent" if info.parent else "-"),
        ("tags", console.join_safe(info.tags) or "-"),
    ]
    lines += [("metric", f"{safe(name)} = {fmt_metric(v)}") for name, v in info.metrics.items()]
    for label, value in lines:
        click.echo(f"{label:11s} {safe(value)}")
    if tensors:
        C = console.Column
        t = console.FitTable(C("key", min_width=24, cut="middle"), C("dtype", priority=2),
                             C("shape", priority=1, min_width=10), C("bytes", right=True))
        for k, s in keys:
            t.add_row(k, s.dtype, str(list(s.shape)), human_bytes(s.nbytes))
        console.show(t)
