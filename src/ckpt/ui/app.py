"""The web view as a plain function of a request: routing, errors, the read-only rule, and the few
things pages share (chrome, caches of histories and tags). No HTTP here: ``server.py`` does that, and the
benchmark can time pages the same way."""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

from ckpt.errors import (CheckpointNotFoundError, CkptError, InvalidArgumentError, MetricDirectionError,
                         ReadOnlyStoreError, SelectorError)
from ckpt.ui import security
from ckpt.ui.html import Chrome, esc, page, url
from ckpt.ui.source import Source, sqlite_path

log = logging.getLogger("ckpt.ui")
_STATIC = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml", ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
HISTORIES_CACHED = 256


class Query:
    """The query string (or form) of a request: ``one`` value or ``all`` values of a name."""

    def __init__(self, raw: str | Mapping[str, list[str]] = "") -> None:
        self._d: dict[str, list[str]] = (parse_qs(raw, keep_blank_values=True, max_num_fields=200)
                                         if isinstance(raw, str) else {k: list(v) for k, v in raw.items()})

    def one(self, name: str) -> str | None:
        v = self._d.get(name)
        return v[-1] if v else None

    def all(self, name: str) -> list[str]:
        return list(self._d.get(name, ()))

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._d.items()}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


NOTICES = {"tagged": "tagged as {arg}", "untagged": "removed tag {arg}", "removed": "removed checkpoint {arg}"}


class App:
    def __init__(self, source: Source, guard: security.Guard, *, storage_options: Mapping[str, Any] | None = None) -> None:
        self.source = source
        self.guard = guard
        self.writable = source.writable
        store = source.store
        self.location = security.display_location(store.location)
        path = sqlite_path(store.catalog.url)
        self.index = f"sqlite:///{path}" if path else security.display_index(store.catalog.url)
        if store.catalog.url in ("sqlite://", "sqlite:///:memory:"):
            self.index = "in memory (rebuilt from the manifests)"
        self.hidden = security.secrets_in(source.index_url, source.location, storage_options)
        self._histories: dict[str, Any] = {}
        self._write_lock = threading.Lock()

    # -- shared by pages --------------------------------------------------------------------------
    def chrome(self) -> Chrome:
        return Chrome(self.location, self.index, self.writable, self.guard.token)

    def command_location(self) -> str | None:
        """The store as a command line names it, unless it is in memory (not reachable from a shell)."""
        loc = self.location
        return None if loc.startswith("memory://") else loc

    def history_of(self, checkpoint_id: str) -> list[dict] | None:
        from ckpt.ui.pages.run import history_from
        if checkpoint_id in self._histories:
            return self._histories[checkpoint_id]
        try:
            h = history_from(self.source.manifest(checkpoint_id).plain_structure())
        except CkptError:
            h = None
        if len(self._histories) >= HISTORIES_CACHED:
            self._histories.clear()
        self._histories[checkpoint_id] = h
        return h

    def tags(self) -> dict[str, tuple[str, ...]]:
        """Checkpoint id -> its tags."""
        out: dict[str, list[str]] = {}
        for name, cid in self.source.store.catalog.tags().items():
            out.setdefault(cid, []).append(name)
        return {k: tuple(sorted(v)) for k, v in out.items()}

    def best_ids(self) -> set[str]:
        return set(self.source.store.catalog.best_per_run().values())

    def suggestions(self) -> list[str]:
        out = ["latest", "best", "latest~1"]
        out += sorted(self.source.store.catalog.tags())
        lin = self.source.lineage()
        with self.source.locked():
            rows = list(lin.rows.values())[-40:]
            runs = list(dict.fromkeys(r.run for r in reversed(list(lin.rows.values())[-2000:])))[:40]
        out += [f"{r}:latest" for r in runs]
        out += [f"{r.id[:12]}" for r in reversed(rows)]
        return list(dict.fromkeys(out))

    def notice(self, q: Query) -> str | None:
        kind = q.one("done")
        if kind in NOTICES:
            return NOTICES[kind].format(arg=(q.one("arg") or "")[:200])
        return None

    # -- requests ---------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        if not self.guard.host_ok(headers.get("Host")):
            return self._error(421, "This ckpt ui answers only to 127.0.0.1/localhost with its own port "
                                    "(a guard against DNS rebinding).", plain=True)
        try:
            with self.source.serving():
                if method == "GET" or method == "HEAD":
                    return self._get(path, Query(query))
                if method == "POST":
                    return self._post(path, headers, body)
                return self._error(405, f"method {method} not allowed", plain=True)
        except CheckpointNotFoundError as exc:
            return self._error(404, str(exc))
        except (SelectorError, InvalidArgumentError, MetricDirectionError) as exc:
            return self._error(400, str(exc))
        except ReadOnlyStoreError as exc:
            return self._error(403, str(exc))
        except CkptError as exc:
            return self._error(500, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: the page says so, the terminal has the traceback
            traceback.print_exc(file=sys.stderr)
            return self._error(500, f"internal error ({type(exc).__name__}); the terminal running ckpt ui has "
                                    f"the traceback")

    def _get(self, path: str, q: Query) -> Response:
        from ckpt.ui.pages import checkpoint, diff, lineage, run, runs
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/healthz":  # for scripts and tests: up, and whether the lineage is read yet
            import json
            doc = {"ok": True, "ready": self.source.ready}
            return Response(200, json.dumps(doc).encode(), "application/json")
        pages: dict[str, Callable[[Any, Query], str]] = {
            "/": runs.render, "/run": run.render, "/lineage": lineage.render, "/checkpoint": checkpoint.render,
            "/diff": diff.render, "/fragment/runs": runs.fragment, "/fragment/run": run.fragment}
        fn = pages.get(path)
        if fn is None:
            return self._error(404, f"no page {path}")
        self.source.refresh()
        html = fn(self, q)
        headers = {"Set-Cookie": self.guard.set_cookie()} if self.writable and not path.startswith("/fragment/") else {}
        return Response(200, self._clean(html).encode(), headers=headers)

    def _post(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        if not self.writable:
            return self._error(403, "This ckpt ui is read-only. To tag, untag or remove checkpoints from the "
                                    "browser, start it with --allow-writes.")
        if path not in ("/action/tag", "/action/untag", "/action/rm"):
            return self._error(404, f"no action {path}")
        ctype = headers.get("Content-Type", "")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return self._error(400, "expected a form (application/x-www-form-urlencoded)")
        try:
            form_q = Query(body.decode("utf-8"))
        except UnicodeDecodeError:
            return self._error(400, "the form is not UTF-8")
        form = {k: v[-1] for k, v in form_q.as_dict().items() if v}
        why = self.guard.post_error(headers, form)
        if why is not None:
            return self._error(403, f"refused: {why}")
        store = self.source.store
        cid = form.get("id", "")
        with self._write_lock:
            if path == "/action/tag":
                info = store.tag(cid, form.get("name", ""))
                target = url("/checkpoint", id=info.id, done="tagged", arg=form.get("name", ""))
            elif path == "/action/untag":
                store.untag(form.get("name", ""))
                target = url("/checkpoint", id=cid, done="untagged", arg=form.get("name", "")) if cid else "/"
            else:
                info = store.delete(cid)
                target = url("/run", name=info.run, done="removed", arg=info.short_id)
        self.source.refresh(force=True)
        return Response(303, b"", "text/plain; charset=utf-8", {"Location": target})

    def _static(self, name: str) -> Response:
        if not _STATIC.match(name):
            return self._error(404, "no such file", plain=True)
        f = resources.files("ckpt.ui").joinpath("static", name)
        if not f.is_file():
            return self._error(404, "no such file", plain=True)
        ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        return Response(200, f.read_bytes(), CONTENT_TYPES.get(ext, "application/octet-stream"),
                        {"Cache-Control": "no-cache"})

    def _clean(self, text: str) -> str:
        return security.scrub(text, self.hidden) if self.hidden else text

    def _error(self, status: int, message: str, *, plain: bool = False) -> Response:
        message = self._clean(message)
        if plain:
            return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")
        titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed", 500: "Error"}
        body = (f'<h1>{esc(titles.get(status, "Error"))}</h1><p class="error" id="error-message">{esc(message)}</p>'
                f'<p><a href="/">back to the runs</a></p>')
        return Response(status, self._clean(page(self.chrome(), titles.get(status, "Error"), body)).encode())
