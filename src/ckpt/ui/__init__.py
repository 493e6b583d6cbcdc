"""``ckpt ui``: a local web view of a store: runs, metric curves, lineage, checkpoints and diffs.

    from ckpt.ui import create_server
    server = create_server("checkpoints/", port=0)        # read-only; allow_writes=True for tag/untag/rm
    print(server.url); server.serve_forever()

Stdlib HTTP, server-rendered HTML and SVG, one small script and stylesheet shipped in the package: no
CDN, no build step, no dependency beyond ckpt's own. Importing it does not import torch; only the diff
page does, when it is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_server"]


def create_server(location: str, *, index: str | None = None, storage_options: dict[str, Any] | None = None,
                  host: str = "127.0.0.1", port: int = 8765, allow_writes: bool = False):  # type: ignore[no-untyped-def]
    """Open the store (read-only unless ``allow_writes``) and bind ``host:port`` (0: any free port).
    The returned server has ``url``, ``app``, ``serve_forever()`` and ``shutdown()``/``server_close()``."""
    from ckpt.ui.app import App
    from ckpt.ui.security import Guard
    from ckpt.ui.server import make_server
    from ckpt.ui.source import Source
    source = Source(location, index=index, storage_options=storage_options, writable=allow_writes)
    try:
        server = make_server(lambda p: App(source, Guard(host, p), storage_options=storage_options), host, port)
    except BaseException:
        source.close()
        raise
    bound = server.server_address[1]
    shown = "127.0.0.1" if host.strip("[]") in ("", "0.0.0.0") else ("[::1]" if host.strip("[]") == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    server.url = f"http://{shown}:{bound}/"  # type: ignore[attr-defined]
    server.app = server.RequestHandlerClass.app  # type: ignore[attr-defined]
    server.source = source  # type: ignore[attr-defined]
    return server
