"""The ``ckpt`` command line: a thin layer over CheckpointStore, one module per command."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckpt import __version__
from ckpt.cli.common import Ctx
from ckpt.cli.errors import run_guarded


class CkptGroup(click.Group):
    """A click group whose failures are one line on stderr (see ckpt.cli.errors), also under CliRunner."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        return run_guarded(lambda: super(CkptGroup, self).main(args, prog_name, complete_var,
                                                               standalone_mode=False, **extra))


@click.group(cls=CkptGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", "store", envvar="CKPT_STORE", metavar="PATH_OR_URL",
              help="The checkpoint store (directory or fsspec URL). Default: $CKPT_STORE.")
@click.option("--index", "index", envvar="CKPT_INDEX", metavar="URL",
              help="SQLAlchemy URL of a separate index database. Default: SQLite inside the store.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (also accepted after "
              "the command name).")
@click.version_option(__version__, "-V", "--version", prog_name="ckpt")
@click.pass_context
def cli(ctx: click.Context, store: str | None, index: str | None, as_json: bool) -> None:
    """Inspect and manage a ckpt checkpoint store.

    \b
    Examples:
      export CKPT_STORE=checkpoints/
      ckpt ls --sort val_acc
      ckpt diff resnet-a@3 best:val_acc
      ckpt restore best:val_acc -o model.pt

    Selectors: latest, best, best:METRIC, RUN@EPOCH, RUN:latest, RUN:best[:METRIC], TAG, ID-PREFIX,
    each with an optional ~N (N checkpoints earlier in the same lineage). Full reference: docs/cli.md.
    """
    ctx.obj = Ctx(store, index, as_json)


COMMANDS = ("ls", "show", "diff", "log", "runs", "restore", "export", "import_", "tag", "untag", "rm",
            "prune", "gc", "verify", "reindex", "upgrade", "plot", "objective", "ui")


def _register() -> None:
    import importlib
    for name in COMMANDS:
        cli.add_command(importlib.import_module(f"ckpt.cli.{name}").command)


_register()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="ckpt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
