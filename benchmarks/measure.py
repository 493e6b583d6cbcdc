"""What every benchmark worker shares: cache control, durability, memory ballast and the timer."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import torch


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def drop_cache(path: str) -> None:
    """Cold cache: fsync, then ask the kernel to drop the pages (no mapping is alive)."""
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(path: str) -> None:
    for f in files_under(path):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def ballast(gib: float) -> None:
    """Touch fresh memory right before a timed region: this VM hands freed memory back to the host."""
    if gib > 0:
        x = torch.empty(int(gib * (1 << 30)), dtype=torch.uint8)
        x.fill_(1)
        del x


def fsync_path(path: str) -> None:
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fd = os.open(os.path.dirname(path.rstrip("/")), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
    return out


def empty_like(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.empty_like(v).fill_(0)
        elif isinstance(v, dict):
            out[k] = empty_like(v)
        else:
            out[k] = v
    return out


def copy_into(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, torch.Tensor):
            dst[k].copy_(v)
        elif isinstance(v, dict):
            copy_into(dst[k], v)


class Timer:
    """Times one operation: ballast first (see ``ballast``), then the call; on CUDA the clock stops only
    once the device has finished what the call queued, so a call that returns early is not credited
    with work still in flight on the GPU."""

    def __init__(self, ballast_gib: float, device: str = "cpu") -> None:
        self.ballast_gib = ballast_gib
        self.cuda = device.startswith("cuda")
        self.out: dict[str, float] = {}
        self.info: dict[str, Any] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        ballast(self.ballast_gib)
        if self.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        if self.cuda:
            torch.cuda.synchronize()
        self.out[name] = time.perf_counter() - t
        return result
