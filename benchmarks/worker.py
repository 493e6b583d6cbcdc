"""One benchmark repetition in a fresh process: one case, one system, all of that system's operations.

Prints one JSON object: {"op": seconds or value, ..., "_info": {...}} ("_info": anything that is not a
number: errors, notes, per-table row counts). Run by benchmarks/run.py, not by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.cases import CASES, mutate, nbytes, tensors  # noqa: E402
from benchmarks.measure import (Timer, copy_into, drop_cache, empty_like, flat, fsync_path,  # noqa: E402
                                reset_peak, rss_kib)


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


def first_path(state: dict) -> tuple:
    """The path (a tuple of keys) of the first tensor of a nested dict."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            return (k,)
        if isinstance(v, dict):
            return (k, *first_path(v))
    raise ValueError("no tensor in the state")


def run_ckpt(state: dict, d: str, t: Timer, case: str) -> None:
    from ckpt import CheckpointStore
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
    try:  # internal functions of format 1: measured while they exist, skipped after the rewrite
        from ckpt.format.tensors import byte_view, checksum, tensor_hash
    except ImportError:
        t.info["hash_only"] = "n/a: ckpt.format.tensors is gone"
    else:
        if not t.cuda:
            t("hash_only", lambda: [(tensor_hash("float32", x.shape, byte_view(x)), checksum(byte_view(x)))
                                    for x in ts])
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
    first_key = first_path(state)

    def first_tensor() -> None:
        with store.open("latest") as lazy:
            lazy.tensor(first_key)
    fresh = CheckpointStore(store_dir, compression="none")  # no manifest cached in this process
    store = fresh
    t("lazy_first_cold", first_tensor)


def run_codec(state: dict, d: str, t: Timer) -> None:
    try:  # internal functions: measured while they exist
        from ckpt.format import codec
        from ckpt.format.tensors import byte_view
    except ImportError as exc:
        t.info["codec"] = f"n/a: {exc}"
        return
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


def run_raw_device(state: dict, d: str, t: Timer) -> None:
    """The floors on a GPU: copy into pinned host buffers (what an async save must at least block for),
    write those + fsync (what a durable save must at least take), copy back to the device (hot load)."""
    ts = tensors(state)
    pin = t.cuda
    bufs = [torch.zeros(x.shape, dtype=x.dtype, pin_memory=pin) for x in ts]
    t("copy", lambda: [b.copy_(x, non_blocking=pin) for b, x in zip(bufs, ts)])
    path = os.path.join(d, "raw.bin")

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for b in bufs:
            os.write(fd, b.reshape(-1).view(torch.uint8).numpy().data)
        os.fsync(fd)
        os.close(fd)
    t("write", write)
    t("h2d", lambda: [x.copy_(b, non_blocking=pin) for b, x in zip(bufs, ts)])


SYSTEMS = {"raw": run_raw, "torch": run_torch, "safetensors": run_safetensors, "dcp": run_dcp,
           "ckpt": run_ckpt, "codec": run_codec}
#: Cases with their own operations (benchmarks/history.py, s3.py, models.py; "catalog" has its own
#: worker script, startup.py, which imports neither torch nor ckpt).
SPECIAL = {"tiny", "growth", "prune", "s3", "gpt2", "resnet50", "gpu_gpt2"}


def to_device(state: dict, device: str) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) if isinstance(v, dict)
                else v) for k, v in state.items()}


def run_case(case: str, system: str, d: str, t: Timer, quick: bool, device: str) -> None:
    from benchmarks import history, models, s3
    if case == "tiny":
        out, info = history.saves_of_tiny(system, d, quick)
    elif case == "growth":
        out, info = history.growth(d, quick)
    elif case == "prune":
        out, info = history.prune(d, quick)
    elif case == "s3":
        s3.run(system, quick, t)
        return
    elif case in ("gpt2", "resnet50", "gpu_gpt2"):
        models.run(case.removeprefix("gpu_"), system, d, t, quick, device)
        return
    else:
        base = case.removeprefix("gpu_")
        state = CASES[base](quick)
        if device != "cpu":
            state = to_device(state, device)
        if system == "ckpt":
            run_ckpt(state, d, t, base)
        elif system == "raw" and case.startswith("gpu_"):
            run_raw_device(state, d, t)
        else:
            SYSTEMS[system](state, d, t)
        t.out["bytes"] = nbytes(state)
        return
    t.out.update(out)
    t.info.update(info)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case")
    p.add_argument("system")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    p.add_argument("--device", default="cpu", help="where the state lives (gpu_* cases: cuda)")
    p.add_argument("--ballast", type=float, default=None, help="GiB touched before each timed region")
    args = p.parse_args()
    base = args.case.removeprefix("gpu_")
    if args.case not in SPECIAL and base not in CASES:
        p.error(f"unknown case {args.case!r}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    d = tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir or os.environ.get("CKPT_BENCH_WORKDIR"))
    ballast = args.ballast if args.ballast is not None else (0 if args.quick else 1.5)
    t = Timer(ballast, args.device)
    try:
        run_case(args.case, args.system, d, t, args.quick, args.device)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({**t.out, "_info": t.info}))


if __name__ == "__main__":
    main()
