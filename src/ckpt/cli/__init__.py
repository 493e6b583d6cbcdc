"""The ``ckpt`` command line: a thin layer over CheckpointStore, one module per command."""

from __future__ import annotations

import sys

import click

from ckpt import __version__
from ckpt.cli.common import Ctx, fail_on_ckpt_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", "store", envvar="CKPT_STORE", metavar="PATH_OR_URL",
              help="The checkpoint store (directory or fsspec URL). Default: $CKPT_STORE.")
@click.option("--index", "index", envvar="CKPT_INDEX", metavar="URL",
              help="SQLAlchemy URL of a separate index database. Default: SQLite inside the store.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(__version__, prog_name="ckpt")
@click.pass_context
def cli(ctx: click.Context, store: str | None, index: str | None, as_json: bool) -> None:
    """Inspect and manage a ckpt checkpoint store."""
    ctx.obj = Ctx(store, index, as_json)


def _register() -> None:
    from ckpt.cli import ls, reindex, show, verify
    for module in (ls, show, verify, reindex):
        cli.add_command(module.command)


_register()


def main(argv: list[str] | None = None) -> None:
    with fail_on_ckpt_errors():
        cli.main(args=argv, prog_name="ckpt", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
