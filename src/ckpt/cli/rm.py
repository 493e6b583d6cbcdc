"""ckpt rm: remove checkpoints and free the data only they used."""

from __future__ import annotations

import click

from ckpt.cli.common import CliError, describe, emit_json, human_bytes, json_option, pass_ctx


@click.command("rm", short_help='Remove checkpoints.')
@click.argument("selectors", nargs=-1, required=True, metavar="SELECTOR...")
@click.option("--force", is_flag=True, help="Also remove tagged checkpoints (their tags go with them).")
@json_option
@pass_ctx
def command(ctx, selectors, force) -> None:  # type: ignore[no-untyped-def]
    """Remove checkpoints from the store.

    Every selector is resolved before anything is removed, so a typo removes nothing. Packs that
    only the removed checkpoints used are deleted at once; tensors shared with other checkpoints
    stay (`ckpt gc` sweeps anything left unreferenced; `ckpt prune` removes by policy).

    \b
    Examples:
      ckpt rm resnet-a@3 resnet-a@4
      ckpt rm 3f9a1c2b --force
      ckpt rm broken-run:latest
    """
    store = ctx.open(readonly=False)
    targets = {}
    for sel in selectors:
        info = store.get(sel)
        targets.setdefault(info.id, info)
    tagged = [i for i in targets.values() if i.tags]
    if tagged and not force:
        from ckpt.cli.console import join_safe
        names = ", ".join(f"{describe(i)} [{join_safe(i.tags)}]" for i in tagged)
        raise CliError(f"refusing to remove tagged checkpoint(s) {names}; untag them or pass --force")
    freed = sum(store.catalog.exclusive_packs(list(targets)).values())
    removed = [store.delete(info) for info in targets.values()]  # a CheckpointInfo: gone meanwhile is fine
    if ctx.as_json:
        emit_json([i.to_dict() for i in removed])
        return
    for info in removed:
        click.echo(f"removed {describe(info)}")
    click.echo(f"{len(removed)} checkpoint(s) removed, {human_bytes(freed)} freed", err=True)
