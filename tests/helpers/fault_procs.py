"""Child processes driven line by line over pipes, with a timeout on every wait (nothing may hang)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def helper(name: str) -> str:
    return os.path.join(HERE, name)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class LineProc:
    """A subprocess whose stdout is read line by line on a thread; stderr is collected for messages."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, name: str = "") -> None:
        self.name = name or os.path.basename(args[1] if len(args) > 1 else args[0])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     env=env or child_env())
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.err.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix`` (other lines are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {prefix!r} line within {timeout} s; stdout so far "
                                     f"{self.seen[-20:]}; stderr:\n{self.stderr[-4000:]}") from None
            if line is None:
                self.proc.wait(timeout=10)
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before printing {prefix!r};"
                                     f" stdout {self.seen[-20:]}; stderr:\n{self.stderr[-4000:]}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def finish(self, timeout: float) -> int:
        """Close stdin and wait for exit; kill (and fail) if it does not exit in time."""
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout} s; "
                                 f"stderr:\n{self.stderr[-4000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def run_helper(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a helper script to completion with a timeout."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env())
