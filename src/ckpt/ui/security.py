"""What keeps a local web view local: host checks, the CSRF token for writes, and no credentials shown.

* Bound to a loopback address, the server answers only requests whose ``Host`` is a loopback name with
  its port, so a web page elsewhere cannot read the store through DNS rebinding.
* Every POST (tag, untag, rm; only with ``--allow-writes``) needs the server's random token twice: in a
  ``SameSite=Strict`` cookie and in the form (or an ``X-CSRF-Token`` header); a cross-site ``Origin``,
  ``Referer`` or ``Sec-Fetch-Site`` is refused as well.
* Index URLs are shown with their password masked and storage URLs without user information; the
  values of secret-looking storage options (key, secret, token, password...) are never shown, and are
  scrubbed from error messages.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from http.cookies import SimpleCookie
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from ckpt.catalog import display_url

_SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|session|auth|signature", re.I)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str]:
    """``Host`` header -> (host, port): ``127.0.0.1:8765``, ``[::1]:8765``, ``localhost``."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return "", ""
        rest = value[end + 1:]
        return value[1:end], rest[1:] if rest.startswith(":") else ""
    host, _, port = value.partition(":")
    return host, port


def is_any(host: str) -> bool:
    """Whether binding ``host`` listens on every interface (0.0.0.0, ::, or an empty host)."""
    return host.strip("[]") in ("", "0.0.0.0", "::")


class Guard:
    """The per-server CSRF token and the checks every request goes through."""

    def __init__(self, bind_host: str, port: int) -> None:
        self.token = secrets.token_urlsafe(32)
        self.port = port
        self.loopback_only = is_loopback(bind_host)
        self.cookie = f"ckpt_csrf_{port}"  # cookies ignore ports: two servers must not share one

    def host_ok(self, host_header: str | None) -> bool:
        """A loopback-bound server answers only to loopback names with its own port."""
        if not self.loopback_only:
            return True
        host, port = split_host(host_header or "")
        return bool(host) and is_loopback(host) and port == str(self.port)

    def set_cookie(self) -> str:
        return f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"

    def post_error(self, headers: Mapping[str, str], form: Mapping[str, str]) -> str | None:
        """Why a POST is refused, or None when it carries the token and comes from this origin."""
        host = headers.get("Host", "")
        if not self.host_ok(host):
            return "unexpected Host header"
        origin = headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            return f"cross-origin request from {origin[:100]!r}"
        referer = headers.get("Referer")
        if origin is None and referer and not referer.startswith(f"http://{host}/"):
            return "cross-origin request (Referer)"
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request (Sec-Fetch-Site: {site[:40]})"
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("Cookie", ""))
        except Exception:
            return "unreadable cookie"
        sent = form.get("csrf") or headers.get("X-CSRF-Token") or ""
        jar = cookie.get(self.cookie)
        if jar is None or not hmac.compare_digest(jar.value, self.token):
            return "missing or wrong CSRF cookie (reload the page)"
        if not hmac.compare_digest(sent, self.token):
            return "missing or wrong CSRF token (reload the page)"
        return None


def display_location(location: str) -> str:
    """A storage URL without user information (``s3://KEY:SECRET@bucket`` -> ``s3://bucket``)."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts)


def display_index(url: str) -> str:
    """An index URL for a page: password masked (SQLAlchemy's rendering), user information dropped."""
    return display_location(display_url(url))


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Storage options with every secret-looking value replaced (nested dicts too)."""
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        elif _SECRET_KEY.search(str(k)):
            out[k] = "***"
        else:
            out[k] = v
    return out


def secrets_in(index_url: str | None, location: str, options: Mapping[str, Any] | None) -> list[str]:
    """The secret strings that must never appear on a page (to scrub error messages with)."""
    found: list[str] = []
    for u in (index_url or "", location):
        if "://" in u:
            try:
                parts = urlsplit(u)
                if parts.password:
                    found.append(parts.password)
                if "@" in parts.netloc and parts.username:
                    found.append(parts.username if ":" in parts.netloc.rsplit("@", 1)[0] else "")
            except ValueError:
                pass

    def walk(opts: Mapping[str, Any] | None) -> None:
        for k, v in (opts or {}).items():
            if isinstance(v, Mapping):
                walk(v)
            elif _SECRET_KEY.search(str(k)) and isinstance(v, str):
                found.append(v)
    walk(options)
    return sorted({s for s in found if s and len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, hidden: list[str]) -> str:
    for s in hidden:
        text = text.replace(s, "***")
    return text
