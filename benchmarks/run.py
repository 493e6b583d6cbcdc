"""The benchmark harness: ckpt against torch.save, safetensors, torch.distributed.checkpoint and the raw
ceilings of this machine, measured in the same run. Every repetition is a fresh process.

    python benchmarks/run.py            # full sizes (1 GiB states), 3 repetitions: ~15 minutes
    python benchmarks/run.py --quick    # tiny sizes, 1 repetition: a smoke test, timings meaningless

Writes benchmarks/results/latest.{json,md} (and a dated copy) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.index_bench import run_index_bench  # noqa: E402

PLAN = {
    "fp32": ["raw", "torch", "safetensors", "dcp", "ckpt", "codec"],
    "bf16": ["raw", "torch", "safetensors", "ckpt", "codec"],
    "small": ["raw", "torch", "safetensors", "ckpt"],
    "adam": ["raw", "torch", "dcp", "ckpt"],
    "lora": ["torch", "ckpt"],
}


def measure(case: str, system: str, reps: int, quick: bool, workdir: str | None) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        cmd = [sys.executable, os.path.join(HERE, "worker.py"), case, system] + (["--quick"] if quick else [])
        if workdir:
            cmd += ["--dir", workdir]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"{case}/{system} failed:\n{out.stderr[-3000:]}")
        for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(k, []).append(v)
        print(f"  {case:6s} {system:12s} {json.dumps({k: round(v[-1], 4) for k, v in samples.items()})}",
              flush=True)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"min": min(v), "median": statistics.median(v)} for k, v in samples.items()}


def ratios(r: dict) -> list[tuple[str, str, float | None, str, str]]:
    """(case, target, measured, goal, verdict) for the issue's targets."""
    rows = []

    def get(case: str, system: str, op: str, stat: str = "min") -> float | None:
        return r.get(case, {}).get(system, {}).get(op, {}).get(stat)

    def add(case: str, what: str, value: float | None, goal: str, ok: bool | None) -> None:
        rows.append((case, what, value, goal, "-" if ok is None else ("met" if ok else "MISSED")))

    for case in ("fp32", "bf16", "adam", "small"):
        raw_w, ck = get(case, "raw", "write"), get(case, "ckpt", "save")
        if raw_w and ck:
            add(case, "durable save: raw write+fsync / ckpt", raw_w / ck, ">= 0.9", raw_w / ck >= 0.9)
        ts = get(case, "torch", "save")
        if ts and ck:
            add(case, "durable save: torch.save+fsync / ckpt", ts / ck, "> 1", ts / ck > 1)
        st = get(case, "safetensors", "save")
        if st and ck:
            add(case, "durable save: safetensors+fsync / ckpt", st / ck, ">= 1", st / ck >= 1)
        copy, ab = get(case, "raw", "copy"), get(case, "ckpt", "async_block")
        if copy and ab:
            add(case, "async blocking: ckpt / copy into buffers", ab / copy, "<= 1.5", ab / copy <= 1.5)
        dab = get(case, "dcp", "async_block")
        if dab and ab:
            add(case, "async blocking: ckpt / dcp.async_save", ab / dab, "<= 0.3", ab / dab <= 0.3)
        rc, cc = get(case, "raw", "read_cold"), get(case, "ckpt", "load_into_cold")
        if rc and cc:
            add(case, "restore cold: raw read / ckpt load_into", rc / cc, ">= 0.85", rc / cc >= 0.85)
        th, ch = get(case, "torch", "load_into_hot"), get(case, "ckpt", "load_into_hot")
        if th and ch:
            add(case, "restore hot: torch.load / ckpt load_into", th / ch, ">= 6", th / ch >= 6)
        lz = get(case, "ckpt", "lazy_first_cold")
        if lz is not None:
            add(case, "lazy load, first tensor (ms, cold)", lz * 1000, "< 10", lz < 0.010)
        hs = get(case, "ckpt", "hash_only")
        if hs and ck:
            add(case, "hashing (blake3+xxh3, not overlapped) / save", hs / ck, "info", None)
        rss = get(case, "ckpt", "save_extra_rss_mib", "median")
        if rss is not None:
            add(case, "save: peak RSS above the state (MiB)", rss, "bounded", None)
        ratio = get(case, "codec", "ratio")
        if ratio:
            goal = 1.40 if case == "bf16" else 1.15
            add(case, "compression ratio", ratio, f">= {goal}", ratio >= goal)
            enc, dec, nb = get(case, "codec", "encode"), get(case, "codec", "decode"), get(case, "codec", "bytes")
            add(case, "compress GB/s", nb / enc / 1e9, ">= 1.0", nb / enc / 1e9 >= 1.0)
            add(case, "decompress GB/s", nb / dec / 1e9, ">= 1.5", nb / dec / 1e9 >= 1.5)
    ds, nb, ts = get("lora", "ckpt", "dedup_save"), get("lora", "ckpt", "dedup_new_bytes", "median"), \
        get("lora", "torch", "save")
    total = get("lora", "ckpt", "bytes")
    if ds and ts:
        add("lora", "99%-frozen save: ckpt / torch.save time", ds / ts, "<= 0.1", ds / ts <= 0.1)
    if nb is not None and total:
        limit = 0.01 * total + 1e6
        add("lora", "99%-frozen save: bytes written (MB)", nb / 1e6, f"<= {limit / 1e6:.1f}", nb <= limit)
    for name, v in r.get("index", {}).items():
        add("index", f"{name} on 100,000 checkpoints (ms)", v * 1000, "< 50", v < 0.05)
    return rows


def markdown(results: dict, rows: list, meta: dict) -> str:
    lines = [f"Benchmark of {meta['date']} on {meta['machine']} ({'quick smoke run' if meta['quick'] else 'full run'},"
             f" {meta['reps']} repetitions, fresh process each, min shown).", "",
             "| case | system | " + " | ".join(OPS) + " |", "|---|---|" + "---|" * len(OPS)]
    for case, systems in results.items():
        if case == "index":
            continue
        for system, ops in systems.items():
            cells = [f"{ops[o]['min']:.3f}" if o in ops else "" for o in OPS]
            lines.append(f"| {case} | {system} | " + " | ".join(cells) + " |")
    lines += ["", "Times in seconds. Targets (each a ratio against what ran beside it):", "",
              "| case | target | measured | goal | |", "|---|---|---|---|---|"]
    for case, what, value, goal, verdict in rows:
        lines.append(f"| {case} | {what} | {'-' if value is None else f'{value:.3g}'} | {goal} | {verdict} |")
    return "\n".join(lines) + "\n"


OPS = ["save", "async_block", "copy", "write", "load_into_cold", "load_into_hot", "load_hot", "read_cold",
       "read_hot", "dedup_save", "lazy_first_cold", "encode", "decode"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (CI smoke test)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--cases", default=",".join(PLAN), help="comma-separated subset of " + ",".join(PLAN))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--workdir", default=None, help="where to write checkpoints (default: system temp dir)")
    args = p.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    started = time.time()
    results: dict = {}
    for case in args.cases.split(","):
        results[case] = {s: summarize(measure(case, s, reps, args.quick, args.workdir)) for s in PLAN[case]}
    results["index"] = run_index_bench(1000 if args.quick else 100_000)
    meta = {"date": dt.date.today().isoformat(), "quick": args.quick, "reps": reps,
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "seconds": round(time.time() - started, 1)}
    rows = ratios(results)
    md = markdown(results, rows, meta)
    os.makedirs(args.out, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "targets": rows}, f, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(md)
    if not args.quick:
        with open(os.path.join(args.out, f"{meta['date']}.md"), "w") as f:
            f.write(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
