"""How the command line fails: one line on stderr, a non-zero exit code, no traceback.

Exit codes (docs/cli.md, "Errors and exit codes"), by what the user has to do about it:

  0   success
  1   ``verify`` found problems, or the user aborted
  2   usage: a bad option or selector, nothing matches, no store there, a file that exists,
      a value ckpt cannot store: fix the command line
  3   an unexpected internal error, a bug (``CKPT_DEBUG=1`` shows its traceback)
  4   damaged data: a checkpoint, manifest, pack or the index is damaged, missing or unsafe to
      read, or a file given to ``import`` is: run ``ckpt verify`` / ``ckpt reindex``
  5   storage: full (ENOSPC, quota, file-size limit), read-only, no permission, unreachable or
      locked: fix the storage and retry; nothing committed was changed
  130 interrupted

Mapped by exception class (ckpt.errors), most specific first.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, NoReturn

import click

from ckpt.errors import (CkptError, CorruptCheckpointError, IndexCorruptError, ReadOnlyStoreError, StorageError,
                         UnsafeMetadataError)

OK = 0
PROBLEMS = 1
USER_ERROR = 2
INTERNAL_ERROR = 3
DATA_ERROR = 4
STORAGE_ERROR = 5
INTERRUPTED = 130

# OSErrors that point at the command line (a mistyped path) rather than at the storage.
_USAGE_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)
_USAGE_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST})


def exit_code(exc: BaseException) -> int:
    """The exit code for a failure, by its class (and errno for plain OSErrors)."""
    if isinstance(exc, (CorruptCheckpointError, UnsafeMetadataError, IndexCorruptError)):
        return DATA_ERROR
    if isinstance(exc, (StorageError, ReadOnlyStoreError)):  # the CLI never asks for read-only to write
        return STORAGE_ERROR
    if isinstance(exc, CkptError):
        return USER_ERROR
    if isinstance(exc, _USAGE_OS_ERRORS) or (isinstance(exc, OSError) and exc.errno in _USAGE_ERRNOS):
        return USER_ERROR
    if isinstance(exc, OSError):  # full, read-only, permission, I/O error, network: the storage's side
        return STORAGE_ERROR
    if _undecodable_argument(exc):
        return USER_ERROR
    return INTERNAL_ERROR


def _undecodable_argument(exc: BaseException) -> bool:
    """An argument with bytes that are not UTF-8 (Python keeps them as lone surrogates in argv), which
    no name in a store can hold: the database refuses to encode it."""
    return isinstance(exc, UnicodeEncodeError) and "surrogate" in str(exc)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    name = exc.filename if exc.filename is not None else ""
    text = f"{what}: {name}" if name else what
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        text += "; free space (or raise the quota) and retry"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += "; check that the path is writable by you"
    return text


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
        fail("aborted", PROBLEMS)
    except CkptError as exc:
        if os.environ.get("CKPT_DEBUG"):
            raise
        fail(str(exc), exit_code(exc))
    except BrokenPipeError:  # `ckpt ls | head`: the reader left; say nothing
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        sys.exit(PROBLEMS)
    except KeyboardInterrupt:
        fail("interrupted", INTERRUPTED)
    except OSError as exc:
        if os.environ.get("CKPT_DEBUG"):
            raise
        fail(_os_message(exc), exit_code(exc))
    except Exception as exc:  # a bug, or an environment problem we did not foresee
        if os.environ.get("CKPT_DEBUG"):
            raise
        if isinstance(exc, UnicodeEncodeError) and _undecodable_argument(exc):
            fail(f"an argument is not valid UTF-8 text ({exc.object[exc.start:exc.end]!a}); names and "
                 f"selectors are UTF-8 text", USER_ERROR)
        fail(f"{type(exc).__name__}: {exc} (this is unexpected; rerun with CKPT_DEBUG=1 for the traceback "
             f"and report it)", INTERNAL_ERROR)
    if isinstance(result, int) and not isinstance(result, bool):  # click.Exit code (--help, --version, exit)
        sys.exit(result)
    sys.exit(OK)
