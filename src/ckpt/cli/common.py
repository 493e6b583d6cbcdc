"""What every command shares: opening the store, the --json switch, CLI errors, formatting values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click

from ckpt.display import age, fmt_delta, fmt_metric, human_bytes  # noqa: F401  (the commands import them from here)


class CliError(click.ClickException):
    """A user error found by the command line itself (a file that exists, a bad option value)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:  # one line, like every other error
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass
class Ctx:
    store_location: str | None
    index: str | None
    as_json: bool

    def open(self, *, readonly: bool = True, create: bool = False, **options):  # type: ignore[no-untyped-def]
        """The store, closed again when the command ends.

        Read commands never create, migrate or recover anything. Write commands do not create a store
        either (a mistyped --store must not leave an empty store behind), except with ``create``.
        """
        from ckpt.store import CheckpointStore
        if not self.store_location:
            raise CliError("no store given: pass --store PATH_OR_URL or set CKPT_STORE")
        if not readonly and not _store_exists(self.store_location):
            if not create:
                from ckpt.errors import StoreNotFoundError
                raise StoreNotFoundError(f"no ckpt store at {self.store_location}; check --store / CKPT_STORE")
            click.echo(f"note: creating a new ckpt store at {self.store_location}", err=True)
        store = CheckpointStore(self.store_location, index=self.index, readonly=readonly, **options)
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            ctx.call_on_close(store.close)
        return store


def _store_exists(location: str) -> bool:
    """Whether ``location`` holds a store, looking only at its marker file (no index is opened)."""
    from ckpt.store import CheckpointStore
    try:
        return CheckpointStore.exists(location)
    except Exception:  # unreachable or malformed: let the real open report it
        return True


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f):  # type: ignore[no-untyped-def]
    """``--json`` after the command name too (``ckpt diff A B --json``), same as ``ckpt --json diff``."""
    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Ctx).as_json = True
    return click.option("--json", "as_json_local", is_flag=True, expose_value=False, is_eager=False,
                        callback=set_json, help="Print machine-readable JSON.")(f)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, allow_nan=True))


def describe(info: Any) -> str:
    """``3f9a1c2b4d5e (resnet-a@7)``: how a checkpoint is named in messages (the run name escaped)."""
    from ckpt.cli.console import safe
    return f"{info.short_id} ({safe(info.run)}@{info.epoch}{'' if info.step is None else f' step {info.step}'})"



def split_key(key: str | None) -> tuple[str, ...] | None:
    """``--only optimizer/state`` as key path components (``/`` separates; state-dict keys have dots)."""
    if key is None:
        return None
    parts = tuple(p for p in key.strip("/").split("/") if p)
    if not parts:
        raise CliError(f"--only {key!r} names no key; give a key such as 'model' or 'optimizer/state'")
    return parts


class _Count(click.ParamType):
    """An integer option in ckpt's one range (1..INT_MAX), refused with the range when outside it."""

    name = "integer"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        from ckpt.validation import INT_MAX
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            text = str(value).strip()
            digits = text.lstrip("+-")
            if not digits.isdigit():
                self.fail(f"{text[:40]!r} is not a whole number", param, ctx)
            if len(digits) > 19:
                self.fail(f"{text[:20]}... is out of range: give N between 1 and {INT_MAX}", param, ctx)
            n = int(text)
        if n < 1:
            self.fail(f"{n} is out of range and would show nothing: give N between 1 and {INT_MAX}, or leave the "
                      f"option out to show every one", param, ctx)
        if n > INT_MAX:
            self.fail(f"{n} is out of range: give N between 1 and {INT_MAX}", param, ctx)
        return n


COUNT = _Count()


def limit_option(what: str = "rows"):  # type: ignore[no-untyped-def]
    """``--limit N``: 1 <= N <= INT_MAX (0 would show nothing, so it is refused with a reason)."""
    return click.option("--limit", type=COUNT, metavar="N", help=f"At most N {what}.")
