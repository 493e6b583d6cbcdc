"""One benchmark repetition in a fresh process: one case, one system, all of that system's operations.

Prints one JSON object: {"op": seconds or value, ...}. Run by benchmarks/run.py, not by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.cases import CASES, mutate, nbytes, tensors  # noqa: E402


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
    def __init__(self, ballast_gib: float) -> None:
        self.ballast_gib = ballast_gib
        self.out: dict[str, float] = {}

    def __call__(self, name: str, fn):  # type: ignore[no-untyped-def]
        ballast(self.ballast_gib)
        t = time.perf_counter()
        result = fn()
        self.out[name] = time.perf_counter() - t
        return result


def run_raw(state: dict, d: str, t: Timer) -> None:
    ts = tensors(state)
    bufs = [torch.empty_like(x).fill_(0) for x in ts]
    t("copy", lambda: [b.copy_(x) for b, x in zip(bufs, ts)])
    path = os.path.join(d, "raw.bin")

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for x in ts:
            os.write(fd, x.reshape(-1).view(torch.uint8).numpy().data)
        os.fsync(fd)
        os.close(fd)
    t("write", write)

    def read() -> None:
        fd = os.open(path, os.O_RDONLY)
        off = 0
        for b in bufs:
            mv = memoryview(b.reshape(-1).view(torch.uint8).numpy())
            os.preadv(fd, [mv], off)
            off += len(mv)
        os.close(fd)
    drop_cache(path)
    t("read_cold", read)
    t("read_hot", read)


def run_torch(state: dict, d: str, t: Timer) -> None:
    path = os.path.join(d, "state.pt")
    t("save", lambda: (torch.save(state, path), fsync_path(path)))
    target = empty_like(state)
    drop_cache(path)
    t("load_into_cold", lambda: copy_into(target, torch.load(path, weights_only=True)))
    t("load_into_hot", lambda: copy_into(target, torch.load(path, weights_only=True)))
    t("load_hot", lambda: torch.load(path, weights_only=True))


def run_safetensors(state: dict, d: str, t: Timer) -> None:
    from safetensors.torch import load_file, save_file
    path = os.path.join(d, "state.safetensors")
    f = flat(state)
    t("save", lambda: (save_file(f, path), fsync_path(path)))
    target = empty_like(f)
    drop_cache(path)
    t("load_into_cold", lambda: copy_into(target, load_file(path)))
    t("load_into_hot", lambda: copy_into(target, load_file(path)))
    t("load_hot", lambda: load_file(path))


def run_dcp(state: dict, d: str, t: Timer) -> None:
    import torch.distributed.checkpoint as dcp
    import warnings
    warnings.filterwarnings("ignore")
    f = flat(state)
    t("save", lambda: (dcp.save(f, checkpoint_id=os.path.join(d, "dcp1")), fsync_path(os.path.join(d, "dcp1"))))
    mutate(f)
    fut = t("async_block", lambda: dcp.async_save(f, checkpoint_id=os.path.join(d, "dcp2")))
    fut.result()
    mutate(f)
    fut = t("async_block", lambda: dcp.async_save(f, checkpoint_id=os.path.join(d, "dcp3")))
    fut.result()
    target = empty_like(f)
    drop_cache(os.path.join(d, "dcp3"))
    t("load_into_cold", lambda: dcp.load(target, checkpoint_id=os.path.join(d, "dcp3")))
    t("load_into_hot", lambda: dcp.load(target, checkpoint_id=os.path.join(d, "dcp3")))


def run_ckpt(state: dict, d: str, t: Timer, case: str) -> None:
    from ckpt import CheckpointStore
    from ckpt.format.tensors import byte_view, checksum, tensor_hash
    store = CheckpointStore(os.path.join(d, "store"), compression="none")
    before: list[int] = []

    def save() -> object:
        reset_peak()  # after the timer's ballast is freed: only what the save itself holds counts
        before.append(rss_kib())
        return store.save("b", 0, state)
    info = t("save", save)
    t.out["save_extra_rss_mib"] = max(rss_kib("VmHWM") - before[0], 0) / 1024
    t.out["new_bytes"] = info.new_bytes
    ts = tensors(state)
    t("hash_only", lambda: [(tensor_hash("float32", x.shape, byte_view(x)), checksum(byte_view(x))) for x in ts])
    if case == "lora":
        mutate(state, "lora")
        info = t("dedup_save", lambda: store.save("b", 1, state))
        t.out["dedup_new_bytes"] = info.new_bytes
    for epoch in (2, 3):  # the first async save sizes the staging buffers; the second reuses them
        mutate(state, "lora" if case == "lora" else None)
        pending = t("async_block", lambda: store.save("b", epoch, state, blocking=False))
        t("async_total", pending.result)
    target = empty_like(state)
    store_dir = os.path.join(d, "store")
    drop_cache(store_dir)
    t("load_into_cold", lambda: store.load_into(target, "latest", key=None))
    t("load_into_hot", lambda: store.load_into(target, "latest", key=None))
    t("load_hot", lambda: store.load("latest"))
    drop_cache(store_dir)
    first_key = next(iter(store.manifest().leaves))[0]

    def first_tensor() -> None:
        with store.open("latest") as lazy:
            lazy.tensor(first_key)
    fresh = CheckpointStore(store_dir, compression="none")  # no manifest cached in this process
    store = fresh
    t("lazy_first_cold", first_tensor)


def run_codec(state: dict, d: str, t: Timer) -> None:
    from ckpt.format import codec
    from ckpt.format.tensors import byte_view
    ts = tensors(state)
    raw = sum(x.numel() * x.element_size() for x in ts)
    encoded = t("encode", lambda: [codec.encode(byte_view(x), x.element_size()) for x in ts])
    stored = sum(len(e) if e is not None else x.numel() * x.element_size() for e, x in zip(encoded, ts))
    outs = [torch.empty_like(x) for x in ts]
    for o in outs:
        o.fill_(0)

    def decode() -> None:
        for e, x, o in zip(encoded, ts, outs):
            if e is not None:
                codec.decode_into(e, byte_view(o), x.element_size())
    t("decode", decode)
    t.out["ratio"] = raw / stored


SYSTEMS = {"raw": run_raw, "torch": run_torch, "safetensors": run_safetensors, "dcp": run_dcp,
           "ckpt": run_ckpt, "codec": run_codec}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("system", choices=sorted(SYSTEMS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    state = CASES[args.case](args.quick)
    d = tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir)
    t = Timer(0 if args.quick else 1.5)
    try:
        if args.system == "ckpt":
            run_ckpt(state, d, t, args.case)
        else:
            SYSTEMS[args.system](state, d, t)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    t.out["bytes"] = nbytes(state)
    print(json.dumps(t.out))


if __name__ == "__main__":
    main()
