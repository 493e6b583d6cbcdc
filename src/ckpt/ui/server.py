"""HTTP for the web view: the standard library's ThreadingHTTPServer, one thread per connection.

A local view for one person needs no framework: requests are few, pages render in milliseconds, and
every dependency avoided is one less thing to install on a training node.
"""

from __future__ import annotations

import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ckpt.ui.app import App, Response

MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Handler(BaseHTTPRequestHandler):
    server_version = "ckpt-ui"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    app: App  # set on the subclass made by make_server

    def _respond(self, r: Response, head: bool = False) -> None:
        self.send_response(r.status)
        headers = {**SECURITY_HEADERS, "Content-Type": r.content_type, "Content-Length": str(len(r.body))}
        if "Cache-Control" not in r.headers:
            headers["Cache-Control"] = "no-store"
        headers.update(r.headers)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(r.body)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = b""
        if method == "POST":
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY:
                self._respond(Response(413, b"request body too large\n", "text/plain; charset=utf-8",
                                       {"Connection": "close"}))
                self.close_connection = True
                return
            body = self.rfile.read(n)
        headers = {k: v for k, v in self.headers.items()}
        r = self.app.handle(method, parts.path, parts.query, headers, body)
        self._respond(r, head=method == "HEAD")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if os.environ.get("CKPT_UI_LOG"):
            sys.stderr.write("ckpt ui: %s - %s\n" % (self.address_string(), format % args))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Server6(Server):
    address_family = socket.AF_INET6


def make_server(app_factory: Any, host: str, port: int) -> Server:
    """Bind ``host:port`` (port 0: any free port); ``app_factory(bound_port)`` makes the App."""
    cls = Server6 if ":" in host.strip("[]") else Server
    handler = type("BoundHandler", (Handler,), {})
    server = cls((host.strip("[]"), port), handler)
    handler.app = app_factory(server.server_address[1])
    return server
