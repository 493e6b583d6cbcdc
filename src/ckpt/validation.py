"""Checks on user-supplied names and numbers, before anything is written."""

from __future__ import annotations

import operator
import re
import unicodedata
from typing import Any

from ckpt.errors import InvalidArgumentError

_RESERVED = {"latest", "best"}


def _text(kind: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{kind} must be a string, got {type(value).__name__} {value!r}")
    if not value or value != value.strip():
        raise InvalidArgumentError(f"{kind} {value!r} must be non-empty without leading/trailing spaces")
    if len(value) > limit:
        raise InvalidArgumentError(f"{kind} is {len(value)} characters long; the limit is {limit}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidArgumentError(f"{kind} {value!r} contains control characters (NUL, newline...)")
    return value


def run_name(value: Any) -> str:
    name = _text("run name", value, 512)
    if "@" in name or re.search(r"~\d+$", name) or name.endswith((":latest", ":best")) or ":best:" in name \
            or name in _RESERVED or name.startswith("best:"):
        raise InvalidArgumentError(f"run name {name!r} would be ambiguous in selectors: avoid '@', a '~N' "
                                   f"ending, ':latest'/':best' endings and the words 'latest'/'best'")
    return name


def tag_name(value: Any) -> str:
    name = _text("tag name", value, 256)
    if name in _RESERVED or any(c in name for c in "@:~") or re.fullmatch(r"[0-9a-fA-F]{6,}", name):
        raise InvalidArgumentError(f"tag {name!r} would be ambiguous in selectors: tags may not be "
                                   f"'latest'/'best', contain '@', ':' or '~', or look like a hex id")
    return name


def integer(kind: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{kind} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{kind} must be an integer, got {type(value).__name__} {value!r}") from None
    if not -(2**62) < v < 2**62:
        raise InvalidArgumentError(f"{kind} {v} is out of range")
    return v


def variant_name(value: Any) -> str:
    """A checkpoint variant ("" when None): a short identifier such as "weights"."""
    if value is None or value == "":
        return ""
    name = _text("variant", value, 64)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise InvalidArgumentError(f"variant {name!r} may only hold letters, digits, '_', '.' and '-'")
    return name
