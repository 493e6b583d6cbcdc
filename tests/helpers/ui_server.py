"""Start ``ckpt ui`` as a user does (the real command, in its own process) and talk HTTP to it."""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit


@dataclass
class UiServer:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT/
    log: str  # the server's stderr

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            hdrs = {"Host": self.host, **(headers or {})}
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, r.read().decode("utf-8", "replace"), {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
        body = urlencode(form).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                  **(headers or {})})

    def stderr(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        try:
            os.unlink(self.log)
        except OSError:
            pass


def start_ui(store: str, *args: str, index: str | None = None, timeout: float = 120.0,
             env: dict[str, str] | None = None) -> UiServer:
    """``ckpt --store STORE [--index I] ui --port 0 ARGS``; returns once it answers and has read the lineage."""
    cmd = [sys.executable, "-m", "ckpt.cli", "--store", store] + (["--index", index] if index else []) + \
        ["ui", "--port", "0", *args]
    log = tempfile.NamedTemporaryFile(prefix="ckpt-ui-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    deadline = time.monotonic() + timeout
    line = ""
    while "http://" not in line:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not ready or proc.poll() is not None and not ready:
            proc.kill()
            raise RuntimeError(f"ckpt ui did not start: {open(log.name).read()[-3000:]}")
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            raise RuntimeError(f"ckpt ui exited ({proc.returncode}): {open(log.name).read()[-3000:]}")
    url = "http://" + line.split("http://", 1)[1].split()[0]
    server = UiServer(proc, url if url.endswith("/") else url + "/", log.name)
    while True:
        try:
            status, body, _ = server.get("/healthz")
            if status == 200 and json.loads(body)["ready"]:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"ckpt ui did not become ready: {server.stderr()[-3000:]}")
        time.sleep(0.1)
