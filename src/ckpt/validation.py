"""Checks on user-supplied names and numbers, before anything is written.

One integer range for everything the index stores as a number (epoch, step) and for every integer
the API or the command line takes (limits, counts, ``RUN@EPOCH``, ``~N``): ``0 <= n <= INT_MAX``,
with ``INT_MAX = 2**62 - 1``. It fits a signed 64-bit column on every backend (SQLite INTEGER,
PostgreSQL BIGINT) with room for ``commit.NO_STEP`` (2**62), and it is checked here, at the edge, so
no backend ever sees a value it would overflow on.

Names (runs, tags, metrics) refuse control characters: C0 (NUL, ESC, CR, LF...), DEL, C1, lone
surrogates and the Unicode line/paragraph separators, which would rewrite a terminal or break a
table when printed. Format characters (bidirectional marks, zero-width spaces) are kept: they are
legitimate in names, and the command line escapes them when it prints.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from typing import Any

from ckpt.errors import InvalidArgumentError

_RESERVED = {"latest", "best"}

#: The inclusive bounds of every integer ckpt stores or takes (epoch, step, limits, counts).
INT_MIN = 0
INT_MAX = 2**62 - 1

#: The step key of a checkpoint saved without a step: after every stepped checkpoint of its epoch, so
#: RUN@EPOCH means the epoch-end checkpoint when there is one (NULLs never collide in UNIQUE, hence a
#: key). Above INT_MAX, so no real step can take it; below 2**63, so it fits a signed 64-bit column.
NO_STEP = 2**62


def step_key(step: int | None) -> int:
    """The sort and uniqueness key of a step: its value, or :data:`NO_STEP` for an epoch's end."""
    return NO_STEP if step is None else step

# Cc: C0, DEL and C1 controls; Cs: lone surrogates (not encodable as UTF-8); Zl/Zp: U+2028/U+2029,
# which str.splitlines() and some terminals treat as line breaks.
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def describe(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, safe for any value (a 5,000-digit int included)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        sign = "-" if value < 0 else ""
        return f"{sign}<an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits>"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__, or a container holding a huge int
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def control_character(text: str) -> str | None:
    """The first control character (or line separator, or lone surrogate) of ``text`` as ``U+XXXX``, or None."""
    for c in text:
        if unicodedata.category(c) in _BAD_CATEGORIES:
            return f"U+{ord(c):04X}"
    return None


def utf8(kind: str, text: str, error: type[Exception] = InvalidArgumentError) -> str:
    """``text`` unchanged when it encodes as UTF-8; ``error`` when it holds a lone surrogate (what Python
    makes of undecodable bytes in argv or file names), which no name in a store can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise error(f"{kind} {describe(text)} is not valid UTF-8 text: it holds the lone surrogate "
                    f"U+{ord(bad):04X} (undecodable bytes); no run, tag or metric name can contain one") from None
    return text


def _text(kind: str, value: Any, limit: int, *, strip: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{kind} must be a string, got {type(value).__name__} {describe(value)}")
    if not value or (strip and value != value.strip()):
        raise InvalidArgumentError(f"{kind} {describe(value)} must be non-empty without leading/trailing spaces")
    if len(value) > limit:
        raise InvalidArgumentError(f"{kind} is {len(value)} characters long; the limit is {limit}")
    bad = control_character(value)
    if bad is not None:
        raise InvalidArgumentError(f"{kind} {describe(value)} contains the control character {bad}; names may "
                                   f"not hold control characters (NUL, ESC, CR, LF, DEL...) or line separators, "
                                   f"since printing them rewrites the terminal")
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


def metric_name(value: Any) -> str:
    """A metric name: a non-empty string of at most 256 characters, without control characters."""
    return _text("metric name", value, 256, strip=False)


def integer(kind: str, value: Any, *, allow_none: bool = False) -> int | None:
    """An integer in ``INT_MIN..INT_MAX`` (numpy and torch integer scalars too); InvalidArgumentError else."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{kind} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{kind} must be an integer, got {type(value).__name__} "
                                   f"{describe(value)}") from None
    except Exception as exc:  # e.g. a torch tensor with several elements
        raise InvalidArgumentError(f"{kind} must be an integer, got {type(value).__name__} ({exc})") from None
    if not INT_MIN <= v <= INT_MAX:
        raise InvalidArgumentError(f"{kind} {describe(v)} is out of range: it must be between {INT_MIN} and "
                                   f"{INT_MAX} (2**62 - 1)")
    return v


def variant_name(value: Any) -> str:
    """A checkpoint variant ("" when None): a short identifier such as "weights"."""
    if value is None or value == "":
        return ""
    name = _text("variant", value, 64)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise InvalidArgumentError(f"variant {name!r} may only hold letters, digits, '_', '.' and '-'")
    return name


def limit(kind: str, value: Any) -> int | None:
    """A row limit or count (None: no limit). Larger than INT_MAX means "all", so it is capped, not refused."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{kind} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except Exception:
        raise InvalidArgumentError(f"{kind} must be an integer, got {type(value).__name__} "
                                   f"{describe(value)}") from None
    if v < 0:
        raise InvalidArgumentError(f"{kind} must be 0 or more, got {describe(v)}")
    return min(v, INT_MAX)


def parse_integer(kind: str, text: str) -> int:
    """``text`` (a decimal integer from a selector or option) as an integer in range; InvalidArgumentError else.

    The length is checked before ``int()``, so a 5,000-digit string is refused cleanly instead of
    hitting Python's int/str conversion limit.
    """
    t = text.strip().replace("_", "") if isinstance(text, str) else ""
    negative = t.startswith("-")
    body = t[1:] if t[:1] in ("+", "-") else t
    if not body.isdecimal():
        raise InvalidArgumentError(f"{kind} must be a whole number, got {describe(text, 40)}")
    if len(body.lstrip("0")) > len(str(INT_MAX)):
        raise InvalidArgumentError(f"{kind} {describe(text, 40)} is out of range: it must be between {INT_MIN} "
                                   f"and {INT_MAX} (2**62 - 1)")
    return integer(kind, -int(body) if negative else int(body))  # type: ignore[return-value]
