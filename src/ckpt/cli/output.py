"""Where restore/export write: default file names that cannot escape the working directory, and
``--only`` key paths matched against the checkpoint's real keys (str or int)."""

from __future__ import annotations

import os
import re
from typing import Any

from ckpt.cli.common import CliError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(text: str, limit: int = 80) -> str:
    """A file-name fragment: no separators, no leading dots, no '..', nothing but [A-Za-z0-9._-]."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "x"
    cleaned = re.sub(r"\.{2,}", "_", cleaned)
    return cleaned[:limit]


def default_name(info: Any, key: tuple | None, suffix: str) -> str:
    parts = [safe_component(info.run), f"e{info.epoch}"]
    if info.step is not None:
        parts.append(f"s{info.step}")
    parts.append(info.id[:8])
    if key:
        parts.append(safe_component("-".join(map(str, key))))
    return "-".join(parts) + suffix


def output_path(option: str | None, info: Any, key: tuple | None, suffix: str) -> str:
    """``-o`` as given (a directory gets the default name inside it), else the default name in the cwd."""
    if option is None:
        return os.path.join(os.getcwd(), default_name(info, key, suffix))
    path = os.path.expanduser(option)
    if os.path.isdir(path) or option.endswith(os.sep):
        return os.path.join(path, default_name(info, key, suffix))
    return path


def check_free(path: str, force: bool) -> None:
    """Fail before any work when the output exists (the final write checks again, atomically)."""
    if os.path.isdir(path):
        raise CliError(f"{path} is a directory; give a file name")
    if os.path.lexists(path) and not force:
        raise CliError(f"{path} exists; pass --force to overwrite it")


def resolve_key(leaves: Any, parts: tuple[str, ...] | None) -> tuple | None:
    """Match each ``--only`` component with the checkpoint's key of that spelling (``state/0`` -> int 0)."""
    if not parts:
        return None
    out: list[Any] = []
    for depth, part in enumerate(parts):
        prefix = tuple(out)
        keys = {p[depth] for p, _ in leaves if len(p) > depth and p[:depth] == prefix}
        match = [k for k in keys if str(k) == part]
        if len(match) > 1:
            raise CliError(f"--only: key {part!r} is ambiguous here (it matches {sorted(map(repr, match))})")
        if match:
            out.append(match[0])
        else:  # no tensor below: a list index or int key is the likelier reading of digits
            out.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
    return tuple(out)


def load_key(store: Any, info: Any, key: tuple | None, parts: tuple[str, ...] | None) -> tuple[Any, tuple | None]:
    """``store.load`` of a sub-tree; digits read as ints are retried as strings (a dict key "0")."""
    from ckpt.errors import InvalidArgumentError
    try:
        return store.load(info.id, key=key), key
    except InvalidArgumentError:
        if not key or not parts or tuple(map(str, key)) != parts or key == parts:
            raise
        return store.load(info.id, key=parts), parts

