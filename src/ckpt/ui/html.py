"""HTML building blocks: escaping, links, number formats and the page layout.

Everything a store holds (run names, tags, metric names, keys, values) may be hostile: it goes through
:func:`esc`, which escapes HTML and shows control characters as ``\\xNN`` instead of passing them on.
Pages are plain server-rendered HTML; ``static/app.js`` only adds sorting, filtering, polling and copy
buttons, so every page reads fine without it.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from ckpt.display import age, fmt_delta, fmt_metric, human_bytes  # noqa: F401  (the pages import them from here)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_char(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 256 else f"\\u{c:04x}"


def safe(value: Any, *, lines: bool = False) -> str:
    """``value`` as text with control characters shown escaped (``\\x1b``), not raw; ``lines`` keeps
    newlines (code blocks)."""
    return (_CONTROL_BUT_NEWLINE if lines else _CONTROL).sub(_escape_char, str(value))


_PLAIN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029&<>\"']")


def esc(value: Any) -> str:
    """Text for HTML content and attribute values."""
    text = str(value)
    if _PLAIN.search(text) is None:  # the common case (ids, numbers, plain names): nothing to do
        return text
    return html.escape(safe(text), quote=True)


def url(path: str, **params: Any) -> str:
    """A link with its query string; parameters that are None are left out (lists repeat the key)."""
    items: list[tuple[str, str]] = []
    for k, v in params.items():
        if v is None:
            continue
        for one in (v if isinstance(v, (list, tuple)) else [v]):
            items.append((k, str(one)))
    return path + ("?" + urlencode(items) if items else "")


def link(path: str, text: Any, cls: str | None = None, **params: Any) -> str:
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(url(path, **params))}"{c}>{esc(text)}</a>'


def checkpoint_link(cid: str, text: Any | None = None) -> str:
    """A link to a checkpoint (ids are hex: no quoting needed)."""
    return f'<a href="/checkpoint?id={esc(cid)}" class="ckpt-id">{esc(text if text is not None else cid[:12])}</a>'


def run_link(name: str) -> str:
    return link("/run", name, "run-name", name=name)


def sort_value(v: float | int | None) -> str:
    """A data-v attribute for sorting: numbers as they are, missing/NaN sorted last."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return repr(v)


def when(ts: datetime | None) -> str:
    """A time for a title attribute (the exact moment behind an age)."""
    return ts.isoformat(timespec="seconds") if ts else ""


STATUS_CLASS = {"running": "st-running", "completed": "st-completed", "failed": "st-failed",
                "interrupted": "st-interrupted", "crashed": "st-crashed"}


def status_badge(status: str) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "")}" data-status="{esc(status)}">{esc(status)}</span>'


def copy_block(text: str, label: str, lang: str = "shell") -> str:
    """A block of code with a copy button (the button copies exactly the text shown)."""
    return (f'<div class="copy"><div class="copy-head"><span>{esc(label)}</span>'
            f'<button type="button" class="copy-btn" data-copy>copy</button></div>'
            f'<pre class="code lang-{esc(lang)}"><code>{html.escape(safe(text, lines=True))}</code></pre></div>')


@dataclass
class Chrome:
    """What every page shows around its content: the store, the mode, and the CSRF token for forms."""

    location: str
    index: str
    writable: bool
    csrf: str

    def form(self, action: str, fields: dict[str, str], button: str, *, cls: str = "", confirm: str | None = None,
             extra: str = "") -> str:
        """A POST form carrying the CSRF token (only ever rendered when writes are allowed)."""
        hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items())
        conf = f' data-confirm="{esc(confirm)}"' if confirm else ""
        return (f'<form method="post" action="{esc(action)}" class="inline {esc(cls)}"{conf}>'
                f'<input type="hidden" name="csrf" value="{esc(self.csrf)}">{hidden}{extra}'
                f'<button type="submit">{esc(button)}</button></form>')


NAV = (("/", "Runs"), ("/lineage", "Lineage"), ("/diff", "Diff"))


def page(chrome: Chrome, title: str, body: str, *, active: str = "", notice: str | None = None) -> str:
    nav = "".join(f'<a href="{p}"{" class=active" if p == active else ""}>{esc(t)}</a>' for p, t in NAV)
    mode = ('<span class="mode mode-write" title="started with --allow-writes: tag, untag and rm are on">'
            'writes allowed</span>' if chrome.writable else
            '<span class="mode mode-ro" title="start ckpt ui with --allow-writes to tag, untag or remove">'
            'read-only</span>')
    note = f'<div class="notice" role="status">{esc(notice)}</div>' if notice else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · ckpt</title>
<link rel="stylesheet" href="/static/app.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<script src="/static/app.js" defer></script>
</head><body>
<header class="top"><a class="brand" href="/">ckpt</a><nav>{nav}</nav>
<div class="store" title="index: {esc(chrome.index)}">{esc(chrome.location)}</div>{mode}</header>
<main>{note}{body}</main>
<footer>store {esc(chrome.location)} · index {esc(chrome.index)}</footer>
</body></html>"""


def table(headers: list[tuple[str, str, str]], rows: list[str], *, id: str, cls: str = "", live: str | None = None,
          empty: str = "nothing here yet") -> str:
    """A sortable table: headers are (label, sort kind "text"|"num"|"", title); rows are ``<tr>`` strings."""
    th = "".join(f'<th{f" data-sort={chr(34)}{k}{chr(34)}" if k else ""}{f" title={chr(34)}{esc(t)}{chr(34)}" if t else ""}>'
                 f'{esc(label)}</th>' for label, k, t in headers)
    live_attr = f' data-live="{esc(live)}"' if live else ""
    body = "".join(rows) or f'<tr class="empty"><td colspan="{len(headers)}">{esc(empty)}</td></tr>'
    return (f'<table id="{esc(id)}" class="data sortable {esc(cls)}"><thead><tr>{th}</tr></thead>'
            f'<tbody{live_attr}>{body}</tbody></table>')
