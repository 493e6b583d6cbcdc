"""How the command line fails: one line on stderr, a non-zero exit code, no traceback.

Exit codes: 0 ok, 1 ``verify`` found problems (or the user aborted), 2 a user error (unknown
selector, missing store, bad option, a file that exists), 3 an unexpected internal error
(``CKPT_DEBUG=1`` shows its traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from ckpt.errors import CkptError

USER_ERROR = 2
INTERNAL_ERROR = 3
INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    name = exc.filename if exc.filename is not None else ""
    return f"{what}: {name}" if name else what


def run_guarded(main: Any) -> Any:
    """Call ``main()`` (click in non-standalone mode) and turn every failure into an exit code."""
    try:
        result = main()
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        fail(exc.format_message().rstrip(".") + hint, USER_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            fail("interrupted", INTERRUPTED)
        fail("aborted", 1)
    except CkptError as exc:
        if os.environ.get("CKPT_DEBUG"):
            raise
        fail(str(exc), USER_ERROR)
    except BrokenPipeError:  # `ckpt ls | head`: the reader left; say nothing
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        sys.exit(1)
    except KeyboardInterrupt:
        fail("interrupted", INTERRUPTED)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        if os.environ.get("CKPT_DEBUG"):
            raise
        fail(_os_message(exc), USER_ERROR)
    except Exception as exc:  # a bug, or an environment problem we did not foresee
        if os.environ.get("CKPT_DEBUG"):
            raise
        fail(f"{type(exc).__name__}: {exc} (this is unexpected; rerun with CKPT_DEBUG=1 for the traceback "
             f"and report it)", INTERNAL_ERROR)
    if isinstance(result, int) and not isinstance(result, bool):  # click.Exit code (--help, --version, exit)
        sys.exit(result)
    sys.exit(0)
