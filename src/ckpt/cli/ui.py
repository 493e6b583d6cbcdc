"""ckpt ui: serve a local web view of the store (runs, curves, lineage, checkpoints, diffs)."""

from __future__ import annotations

import click

from ckpt.cli.common import CliError, pass_ctx


@click.command("ui", short_help="A local web view: runs, curves, lineage, diffs.")
@click.option("--store", "store_opt", metavar="PATH_OR_URL", help="The store to show (same as the global --store; "
              "default: $CKPT_STORE).")
@click.option("--index", "index_opt", metavar="URL", help="SQLAlchemy URL of a separate index database (same as "
              "the global --index; default: $CKPT_INDEX, else the store's own).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on. Anything but a "
              "loopback address makes the store readable by other machines (a warning says so).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on; 0 picks a free one (the URL is printed).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.option("--allow-writes", is_flag=True, help="Allow tag, untag and rm from the browser (each behind a "
              "CSRF token). Without it the store is opened read-only and the page offers no write controls.")
@pass_ctx
def command(ctx, store_opt, index_opt, host, port, open_browser, allow_writes) -> None:  # type: ignore[no-untyped-def]
    """Serve a local web view of the store until Ctrl-C: runs (live while training goes on), each run's
    metric curves and retention plan, the lineage graph across runs, checkpoints with their tensors,
    and diffs.

    Read-only unless --allow-writes. Listens on 127.0.0.1 only, unless --host says otherwise. Works
    offline: every asset is in the package.

    \b
    Examples:
      ckpt ui --store checkpoints/
      ckpt ui --store s3://bucket/ckpts --index postgresql+psycopg://host/db --port 9000 --open
      ckpt ui --store checkpoints/ --allow-writes
    """
    from ckpt.store import CheckpointStore
    from ckpt.errors import StoreNotFoundError
    location = store_opt or ctx.store_location
    if not location:
        raise CliError("no store given: pass --store PATH_OR_URL or set CKPT_STORE")
    try:
        exists = CheckpointStore.exists(location)
    except Exception:  # unreachable or malformed: let the real open report it
        exists = True
    if not exists:
        raise StoreNotFoundError(f"no ckpt store at {location}; check --store / CKPT_STORE")
    from ckpt.ui import create_server
    from ckpt.ui.security import is_loopback
    try:
        server = create_server(location, index=index_opt or ctx.index, host=host, port=port, allow_writes=allow_writes)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
                       f"(--port 0 picks a free one)") from None
    if not is_loopback(host):
        reach = "every machine that can reach this one" if host.strip("[]") in ("", "0.0.0.0", "::") else \
            f"whoever can reach {host}"
        click.echo(f"warning: --host {host} serves this store to {reach}: they can read every run, checkpoint "
                   f"and tensor name{', and tag or remove checkpoints' if allow_writes else ''}. There is no "
                   f"login; use 127.0.0.1 (the default) and an SSH tunnel instead where you can.", err=True)
    mode = "writes allowed (--allow-writes)" if allow_writes else "read-only"
    click.echo(f"ckpt ui: {server.app.location} at {server.url} ({mode}); Ctrl-C to stop", nl=True)
    import sys
    sys.stdout.flush()
    if open_browser:
        import webbrowser
        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        click.echo("ckpt ui: stopped", err=True)
    finally:
        server.server_close()
        server.source.close()
