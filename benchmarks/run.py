"""The benchmark harness: ckpt against torch.save, safetensors, torch.distributed.checkpoint, plain S3
uploads and the raw ceilings of this machine, measured in the same run. Every repetition is a fresh process.

    python benchmarks/run.py                      # every CPU case, full sizes, 3 repetitions (~1 hour)
    python benchmarks/run.py --only issue11       # the cases of issue 11, small ... resnet50 (~35 min)
    python benchmarks/run.py --only tiny,growth   # a subset (names below; groups: 1gib, issue11, gpu)
    python benchmarks/run.py --quick              # tiny sizes, 1 repetition: a smoke test, timings meaningless
    bash scripts/gpu-check.sh                     # the gpu_* cases (and the CUDA tests) on a CUDA machine

Cases (contenders in brackets):
    fp32, bf16, adam, lora   1 GiB states [raw, torch, safetensors, dcp, ckpt, codec]
    small    10,000 tensors of 1 KiB [raw, torch, safetensors, ckpt]
    tiny     10 tensors, ~1 MB, median of 30 saves per process [torch, ckpt]
    growth   2,000 tensors, one changed per save: saves 51-60 vs 1-10; index rows added by one save for
             2,000 and 200 tensors [ckpt]
    prune    60 such checkpoints, prune(keep_last=2) vs the mean save [ckpt]
    s3       256 MiB to a moto S3 server started here, TMPDIR on a 32 MiB tmpfs when root [s3fs, boto3, ckpt,
             ckpt_disktmp: ckpt with its temp dir on disk]
    catalog  start-up: import ckpt.catalog, `ckpt ls` (1,000 checkpoints), `ckpt --help` [python, ckpt]
    gpt2, resnet50   real models + AdamW state after one step [torch, ckpt]
    gpu_fp32, gpu_gpt2   the state on CUDA [raw, torch, dcp, ckpt] / [torch, ckpt]; only with --only
    index    queries on 100,000 checkpoints (filled through SQL)
    ui       `ckpt ui` pages on 100,000 checkpoints (filled through SQL), served by the real command

How to measure on a shared machine without fooling yourself (docs: /work/shared/design/performance.md):
    * a fresh process per repetition, a ballast of fresh memory touched before each timed region;
    * contenders run in the same run, and their ORDER ROTATES between repetitions (repetition r starts
      with contender r mod n): the shared disk here favours the first writer after a pause (raw
      write+fsync of the same bytes ranged 2.3-10.6 s in one run), so a fixed order would favour one system;
    * a pause (--pause, 2.5 s) before each write-heavy process lets the disk's write-back settle, so
      that each contender starts from the same state;
    * min and median of the repetitions, ratios against what ran beside it; absolute times drift.

Writes benchmarks/results/NAME.{json,md} (NAME: "latest" for a full default run, "quick" with --quick,
"partial" with --only, or --name) and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PLAN = {
    "fp32": ["raw", "torch", "safetensors", "dcp", "ckpt", "codec"],
    "bf16": ["raw", "torch", "safetensors", "ckpt", "codec"],
    "small": ["raw", "torch", "safetensors", "ckpt"],
    "adam": ["raw", "torch", "dcp", "ckpt"],
    "lora": ["torch", "ckpt"],
    "tiny": ["torch", "ckpt"],
    "growth": ["ckpt"],
    "prune": ["ckpt"],
    "s3": ["s3fs", "boto3", "ckpt", "ckpt_disktmp"],
    "catalog": ["python", "ckpt"],
    "gpt2": ["torch", "ckpt"],
    "resnet50": ["torch", "ckpt"],
    "gpu_fp32": ["raw", "torch", "dcp", "ckpt"],
    "gpu_gpt2": ["torch", "ckpt"],
    "index": [],
    "ui": [],
}
GROUPS = {
    "1gib": ["fp32", "bf16", "adam", "lora"],
    "issue11": ["small", "tiny", "growth", "prune", "s3", "catalog", "gpt2", "resnet50"],
    "gpu": ["gpu_fp32", "gpu_gpt2"],
}
DEFAULT = ["fp32", "bf16", "small", "adam", "lora", "tiny", "growth", "prune", "s3", "catalog", "gpt2",
           "resnet50", "index", "ui"]
#: Cases that write little or nothing: no pause before their processes.
NO_PAUSE = {"catalog", "codec"}
RUNS_UI = 100  # benchmarks/ui_bench.py RUNS


def expand(spec: str) -> list[str]:
    out: list[str] = []
    for name in filter(None, (x.strip() for x in spec.split(","))):
        for case in GROUPS.get(name, [name]):
            if case not in PLAN:
                raise SystemExit(f"unknown case {case!r}; cases: {', '.join(PLAN)}; groups: {', '.join(GROUPS)}")
            if case not in out:
                out.append(case)
    return out


def rotated(systems: list[str], rep: int) -> list[str]:
    """Repetition ``rep`` starts with contender ``rep mod n``: every contender goes first in turn."""
    k = rep % len(systems) if systems else 0
    return systems[k:] + systems[:k]


def worker(case: str, system: str, args: argparse.Namespace, env: dict[str, str] | None = None,
           aux: str | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    script = "startup.py" if case == "catalog" else "worker.py"
    cmd = [sys.executable, os.path.join(HERE, script), case, system] + (["--quick"] if args.quick else [])
    if case == "catalog":
        cmd.remove(case)
    elif args.workdir:
        cmd += ["--dir", args.workdir]
    if case.startswith("gpu_"):
        cmd += ["--device", args.gpu_device]
    if aux:
        cmd += ["--aux", aux]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{system} failed:\n{out.stderr[-3000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    info = doc.pop("_info", {})
    return {k: float(v) for k, v in doc.items()}, info


@contextlib.contextmanager
def environment(case: str, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """What a case needs around its workers: (env for the workers, aux path, notes, after-each hook)."""
    notes: list[str] = []
    if case == "s3":
        from benchmarks import s3
        with s3.moto_server() as endpoint, s3.small_tmpdir() as (tmpfs, why), \
                tempfile.TemporaryDirectory(prefix="ckpt-bench-s3-", dir=args.workdir) as work:
            env = {**os.environ, **s3.ENV, "CKPT_BENCH_S3_ENDPOINT": endpoint, "CKPT_CACHE_DIR": work,
                   "CKPT_BENCH_WORKDIR": work}  # not TMPDIR: that is the small tmpfs
            if tmpfs:
                env.update(TMPDIR=tmpfs, CKPT_BENCH_TMPFS="1")
            notes.append(why)
            notes.append("moto (a Python server) runs on the same 2 cores as the client")
            yield env, None, notes, lambda: s3.reset_moto(endpoint)
    elif case == "catalog":
        with tempfile.TemporaryDirectory(prefix="ckpt-bench-catalog-", dir=args.workdir) as d:
            store = os.path.join(d, "store")
            t = time.perf_counter()
            worker("catalog", "setup", args, aux=store)
            notes.append(f"store of {'20' if args.quick else '1,000'} checkpoints made in "
                         f"{time.perf_counter() - t:.1f} s")
            yield None, store, notes, lambda: None
    else:
        yield None, None, notes, lambda: None


def measure(case: str, reps: int, args: argparse.Namespace) -> tuple[dict, dict, list[str]]:
    """{system: {op: [samples]}}, {system: info of its last repetition}, notes."""
    systems = PLAN[case]
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    infos: dict[str, Any] = {}
    loads: list[float] = []
    with environment(case, args) as (env, aux, notes, after):
        for rep in range(reps):
            for system in rotated(systems, rep):
                if args.pause and case not in NO_PAUSE and system not in NO_PAUSE:
                    time.sleep(args.pause)
                loads.append(os.getloadavg()[0])
                values, info = worker(case, system, args, env, aux)
                after()
                for k, v in values.items():
                    samples[system].setdefault(k, []).append(v)
                if info:
                    infos[system] = info
                shown = {k: round(v, 4) for k, v in values.items()}
                print(f"  {case:8s} rep {rep + 1} {system:11s} {json.dumps(shown)}", flush=True)
    notes.append(f"load average (1 min) at the start of its processes: {min(loads):.1f}-{max(loads):.1f} "
                 f"on {os.cpu_count()} CPUs")
    return samples, infos, notes


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {k: {"min": min(v), "median": statistics.median(v), "max": max(v), "samples": v}
            for k, v in samples.items()}


# -- targets ---------------------------------------------------------------------------------------------
def targets(r: dict) -> list[dict[str, Any]]:
    """One row per target: what, ckpt's figure, the baseline's, their ratio (of mins and of medians)."""
    rows: list[dict[str, Any]] = []

    def get(case: str, system: str, op: str, stat: str = "min") -> float | None:
        return r.get(case, {}).get(system, {}).get(op, {}).get(stat)

    def add(case: str, what: str, ckpt: Any, base: Any, ratio: float | None, goal: str, ok: bool | None,
            ratio_median: float | None = None) -> None:
        rows.append({"case": case, "what": what, "ckpt": ckpt, "baseline": base, "ratio": ratio,
                     "ratio_median": ratio_median, "goal": goal,
                     "verdict": "-" if ok is None else ("met" if ok else "MISSED")})

    def pair(case: str, what: str, ck: tuple[str, str], base: tuple[str, str], goal: str, limit: float | None,
             ckpt_over_base: bool = True, higher_is_better: bool = False) -> None:
        """A ratio of two measured times (``ck`` and ``base`` are (system, op))."""
        c, b = get(case, *ck), get(case, *base)
        if not c or not b:
            return
        cm, bm = get(case, *ck, "median"), get(case, *base, "median")
        ratio, ratio_m = (c / b, cm / bm) if ckpt_over_base else (b / c, bm / cm)
        ok = None if limit is None else (ratio >= limit if higher_is_better else ratio <= limit)
        add(case, what, c, b, ratio, goal, ok, ratio_m)

    def within(case: str, what: str, ck: str, base: str, goal: str, limit: float) -> None:
        """A ratio of two figures from the same process (ckpt's ``ck`` / ``base``): the median of the
        per-repetition ratios (pairing them is fairer than a ratio of mins), beside the ratio of medians."""
        cs, bs = (r.get(case, {}).get("ckpt", {}).get(op, {}).get("samples") for op in (ck, base))
        if not cs or not bs:
            return
        each = statistics.median(c / b for c, b in zip(cs, bs))
        add(case, what + " (same process)", get(case, "ckpt", ck), get(case, "ckpt", base), each, goal,
            each <= limit, get(case, "ckpt", ck, "median") / get(case, "ckpt", base, "median"))

    # The 1 GiB cases (targets of the performance issue), as before.
    for case in ("fp32", "bf16", "adam", "small"):
        pair(case, "durable save: raw write+fsync / ckpt", ("ckpt", "save"), ("raw", "write"), ">= 0.9", 0.9,
             ckpt_over_base=False, higher_is_better=True)
        if case != "small":
            pair(case, "durable save: torch.save+fsync / ckpt", ("ckpt", "save"), ("torch", "save"), "> 1",
                 1.0, ckpt_over_base=False, higher_is_better=True)
            pair(case, "durable save: safetensors+fsync / ckpt", ("ckpt", "save"), ("safetensors", "save"),
                 ">= 1", 1.0, ckpt_over_base=False, higher_is_better=True)
        pair(case, "async blocking: ckpt / copy into buffers", ("ckpt", "async_block"), ("raw", "copy"),
             "<= 1.5", 1.5)
        pair(case, "async blocking: ckpt / dcp.async_save", ("ckpt", "async_block"), ("dcp", "async_block"),
             "<= 0.3", 0.3)
        pair(case, "restore cold: raw read / ckpt load_into", ("ckpt", "load_into_cold"), ("raw", "read_cold"),
             ">= 0.85", 0.85, ckpt_over_base=False, higher_is_better=True)
        if case != "small":
            pair(case, "restore hot: torch.load / ckpt load_into", ("ckpt", "load_into_hot"),
                 ("torch", "load_into_hot"), ">= 6", 6.0, ckpt_over_base=False, higher_is_better=True)
        lz = get(case, "ckpt", "lazy_first_cold")
        if lz is not None:
            add(case, "lazy load, first tensor (ms, cold)", lz * 1000, None, None, "< 10", lz < 0.010)
        hs, ck = get(case, "ckpt", "hash_only"), get(case, "ckpt", "save")
        if hs and ck:
            add(case, "hashing (blake3+xxh3, not overlapped) / save", hs, ck, hs / ck, "info", None)
        rss = get(case, "ckpt", "save_extra_rss_mib", "median")
        if rss is not None:
            add(case, "save: peak RSS above the state (MiB)", rss, None, None, "bounded", None)
    for case in ("fp32", "bf16"):
        ratio = get(case, "codec", "ratio")
        if ratio:
            goal = 1.40 if case == "bf16" else 1.15
            add(case, "compression ratio", ratio, None, None, f">= {goal}", ratio >= goal)
            enc, dec, nb = get(case, "codec", "encode"), get(case, "codec", "decode"), get(case, "codec", "bytes")
            add(case, "compress GB/s", nb / enc / 1e9, None, None, ">= 1.0", nb / enc / 1e9 >= 1.0)
            add(case, "decompress GB/s", nb / dec / 1e9, None, None, ">= 1.5", nb / dec / 1e9 >= 1.5)
    ds, nb, ts = get("lora", "ckpt", "dedup_save"), get("lora", "ckpt", "dedup_new_bytes", "median"), \
        get("lora", "torch", "save")
    total = get("lora", "ckpt", "bytes")
    if ds and ts:
        add("lora", "99%-frozen save: ckpt / torch.save time", ds, ts, ds / ts, "<= 0.1", ds / ts <= 0.1)
    if nb is not None and total:
        limit = 0.01 * total + 1e6
        add("lora", "99%-frozen save: bytes written (MB)", nb / 1e6, None, None, f"<= {limit / 1e6:.1f}",
            nb <= limit)

    # Issue 11: ratios are ckpt / baseline (lower is better) unless the row says otherwise.
    pair("small", "save: ckpt / torch.save+fsync", ("ckpt", "save"), ("torch", "save"), "<= 1.0 (stretch 0.5)",
         1.0)
    pair("small", "load: ckpt.load / torch.load (hot)", ("ckpt", "load_hot"), ("torch", "load_hot"), "<= 0.3", 0.3)
    pair("small", "load_into: ckpt / torch.load+copy_ (hot)", ("ckpt", "load_into_hot"),
         ("torch", "load_into_hot"), "<= 0.3", 0.3)
    n_tiny = int(get("tiny", "ckpt", "saves") or 30)
    pair("tiny", f"save (median of {n_tiny}): ckpt / torch.save+fsync", ("ckpt", "save_median"),
         ("torch", "save_median"), "<= 2", 2.0)
    within("growth", "save: mean of saves 51-60 / saves 1-10", "last_mean", "first_mean", "<= 1.1", 1.1)
    sizes = sorted(int(k.rsplit("_", 1)[1]) for k in r.get("growth", {}).get("ckpt", {})
                   if k.startswith("rows_added_"))
    big, small_n = (f"rows_added_{sizes[-1]}", f"rows_added_{sizes[0]}") if sizes else (None, None)
    if big and small_n and big != small_n:
        rb, rs = get("growth", "ckpt", big, "median"), get("growth", "ckpt", small_n, "median")
        n_big, n_small = big.rsplit("_", 1)[1], small_n.rsplit("_", 1)[1]
        add("growth", f"index rows added by one save (one new tensor): {n_big} vs {n_small} tensors", rb, rs,
            rb / rs if rs else None, "O(1): same for both (+-2)", rb - rs <= 2)
    removed, left = get("prune", "ckpt", "removed"), get("prune", "ckpt", "left")
    pruned = f"{removed:.0f} of {removed + left:.0f}" if removed is not None and left is not None else "58 of 60"
    within("prune", f"prune(keep_last=2) {pruned}: time / mean save", "prune", "save_mean", "<= 2", 2.0)
    works = get("s3", "ckpt", "works")
    if works is not None:
        add("s3", "256 MiB save to S3, 32 MiB TMPDIR: works (all repetitions)", works, None, None, "1 (works)",
            works >= 1)
    for base in ("s3fs", "boto3"):
        pair("s3", f"S3 throughput: ckpt / plain multipart upload ({base})", ("ckpt", "save"), (base, "save"),
             ">= 0.8", 0.8, ckpt_over_base=False, higher_is_better=True)
    for base in ("s3fs", "boto3"):
        pair("s3", f"S3 throughput, TMPDIR on disk: ckpt / plain multipart upload ({base})",
             ("ckpt_disktmp", "save"), (base, "save"), "info", None, ckpt_over_base=False)
    cat = r.get("catalog", {})
    if cat:
        imp = get("catalog", "ckpt", "catalog_imports_torch", "max")
        if imp is None:
            add("catalog", "import ckpt.catalog does not import torch", "n/a", None, None, "no torch", None)
        else:
            add("catalog", "import ckpt.catalog does not import torch", "imports torch" if imp else "no torch",
                None, None, "no torch", not imp)
            pair("catalog", "import ckpt.catalog (process wall) / python -c pass", ("ckpt", "import_catalog"),
                 ("python", "python_pass"), "info", None)
        pair("catalog", "ckpt ls, 1,000 checkpoints (process wall) / python -c 'import torch'",
             ("ckpt", "cli_ls"), ("python", "import_torch"), "info", None)
        pair("catalog", "ckpt --help (process wall) / python -c 'import torch'", ("ckpt", "cli_help"),
             ("python", "import_torch"), "info", None)
        for op in ("ls", "help"):
            v = get("catalog", "ckpt", f"cli_{op}_imports_torch", "max")
            if v is not None:
                add("catalog", f"ckpt {'ls' if op == 'ls' else '--help'} imports torch",
                    "yes" if v else "no", None, None, "info", None)
    for case in ("gpt2", "resnet50", "gpu_gpt2"):
        pair(case, "durable save: ckpt / torch.save+fsync", ("ckpt", "save"), ("torch", "save"), "< 1", 1.0)
        pair(case, "load_into hot: ckpt / torch.load+load_state_dict", ("ckpt", "load_into_hot"),
             ("torch", "load_into_hot"), "<= 0.17 (6x)", 1 / 6)
        pair(case, "load_into cold: ckpt / torch.load+load_state_dict", ("ckpt", "load_into_cold"),
             ("torch", "load_into_cold"), "info", None)
        pair(case, "async save blocking: ckpt / copy into buffers", ("ckpt", "async_block"), ("torch", "copy"),
             "<= 1.5", 1.5)
    for case in ("gpu_fp32",):
        pair(case, "durable save from CUDA: ckpt / torch.save+fsync", ("ckpt", "save"), ("torch", "save"), "< 1",
             1.0)
        pair(case, "durable save from CUDA: ckpt / pinned copy + write + fsync", ("ckpt", "save"), ("raw", "write"),
             "info", None)
        pair(case, "async blocking from CUDA: ckpt / copy to pinned buffers", ("ckpt", "async_block"),
             ("raw", "copy"), "<= 1.5", 1.5)
        pair(case, "async blocking from CUDA: ckpt / dcp.async_save", ("ckpt", "async_block"),
             ("dcp", "async_block"), "<= 0.3", 0.3)
        pair(case, "load_into CUDA hot: ckpt / torch.load+copy_", ("ckpt", "load_into_hot"),
             ("torch", "load_into_hot"), "<= 0.17 (6x)", 1 / 6)
        pair(case, "load_into CUDA hot: ckpt / pinned host-to-device copy", ("ckpt", "load_into_hot"),
             ("raw", "h2d"), "info", None)
    for name, v in r.get("index", {}).items():
        add("index", f"{name} on 100,000 checkpoints (ms)", v * 1000, None, None, "< 50", v < 0.05)
    for name, v in r.get("ui", {}).items():
        judged = name in UI_TARGETS
        add("ui", f"{name} (ms)", v * 1000, None, None, "< 200" if judged else "info",
            v < 0.2 if judged else None)
    return rows


#: The ui pages with a target (issue 14: the runs page and a run's page answer in under 200 ms).
UI_TARGETS = ("first runs page (cold)", "runs page", "run page", "run page (history)", "runs page after a new save")


# -- output ----------------------------------------------------------------------------------------------
OPS = ["save", "async_block", "copy", "write", "load_into_cold", "load_into_hot", "load_hot", "read_cold",
       "read_hot", "dedup_save", "lazy_first_cold", "encode", "decode"]
WIDE = ("fp32", "bf16", "small", "adam", "lora")


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(results: dict, rows: list, infos: dict, notes: dict, meta: dict) -> str:
    lines = [f"Benchmark of {meta['date']} on {meta['machine']} ({'quick smoke run' if meta['quick'] else 'full run'},"
             f" {meta['reps']} repetitions, fresh process each, contenders rotated, {meta['pause']} s pause before "
             f"each write-heavy process; min shown unless noted). {meta.get('note', '')}".rstrip(), ""]
    lines += ["Targets. ratio: of the minimums, except in rows marked \"same process\" (both figures from one "
              "process): the median of the per-repetition ratios. ratio (medians): of the medians.", "",
              "| case | target | ckpt | baseline | ratio | ratio (medians) | goal | |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['what']} | {fmt(row['ckpt'])} | {fmt(row['baseline'])} | "
                     f"{fmt(row['ratio'])} | {fmt(row['ratio_median'])} | {row['goal']} | {row['verdict']} |")
    wide = [c for c in WIDE if c in results]
    if wide:
        lines += ["", "| case | system | " + " | ".join(OPS) + " |", "|---|---|" + "---|" * len(OPS)]
        for case in wide:
            for system, ops in results[case].items():
                cells = [f"{ops[o]['min']:.3f}" if o in ops else "" for o in OPS]
                lines.append(f"| {case} | {system} | " + " | ".join(cells) + " |")
    other = [c for c in results if c not in WIDE and c not in ("index", "ui")]
    if other:
        lines += ["", "Every measurement of the other cases (seconds unless the name says otherwise):", "",
                  "| case | system | measure | min | median | repetitions |", "|---|---|---|---|---|---|"]
        for case in other:
            for system, ops in results[case].items():
                for op, s in ops.items():
                    reps = ", ".join(fmt(x) for x in s["samples"])
                    lines.append(f"| {case} | {system} | {op} | {fmt(s['min'])} | {fmt(s['median'])} | {reps} |")
    if "index" in results:
        lines += ["", "| index query | ms |", "|---|---|"]
        lines += [f"| {k} | {v * 1000:.2f} |" for k, v in results["index"].items()]
    if "ui" in results:
        lines += ["", "| ckpt ui page (HTTP, min of 5 unless cold) | ms |", "|---|---|"]
        lines += [f"| {k} | {v * 1000:.1f} |" for k, v in results["ui"].items()]
    extra = [(case, system, info) for case, by in infos.items() for system, info in by.items()]
    if extra or any(notes.values()):
        lines += ["", "Notes:", ""]
        for case, ns in notes.items():
            lines += [f"- {case}: {n}" for n in ns]
        for case, system, info in extra:
            for k, v in info.items():
                lines.append(f"- {case}/{system} {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"


def render(path: str) -> None:
    with open(path) as f:
        doc = json.load(f)
    doc["targets"] = targets(doc["results"])
    md = markdown(doc["results"], doc["targets"], doc.get("info", {}), doc.get("notes", {}), doc["meta"])
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write(md)
    print(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (CI smoke test)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--only", "--cases", dest="only", default=None,
                   help="comma-separated cases or groups (" + ", ".join(GROUPS) + "); default: every CPU case")
    p.add_argument("--pause", type=float, default=None, help="seconds before each write-heavy process "
                   "(default 2.5; 0 with --quick)")
    p.add_argument("--gpu-device", default="cuda",
                   help="device of the gpu_* cases (e.g. cpu to test the harness on a machine without CUDA)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None, help="file stem of the results (default: latest / quick / partial)")
    p.add_argument("--note", default="", help="a sentence for the head of the report (e.g. the machine's load)")
    p.add_argument("--workdir", default=None, help="where to write checkpoints (default: system temp dir)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the targets and the .md of an earlier run's "
                   ".json (after a change to the target rows); measures nothing")
    args = p.parse_args()
    if args.render:
        render(args.render)
        return
    cases = expand(args.only) if args.only else DEFAULT
    reps = args.reps or (1 if args.quick else 3)
    args.pause = args.pause if args.pause is not None else (0.0 if args.quick else 2.5)
    started = time.time()
    results: dict = {}
    infos: dict = {}
    notes: dict = {}
    for case in cases:
        if case == "index":
            from benchmarks.index_bench import run_index_bench
            try:
                results["index"] = run_index_bench(1000 if args.quick else 100_000)
            except ImportError as exc:  # it fills the index through format 1's schema
                notes["index"] = [f"n/a: {exc}"]
            continue
        if case == "ui":
            from benchmarks.ui_bench import run_ui_bench
            n = 1000 if args.quick else 100_000
            results["ui"], ui_info = run_ui_bench(n, reps=1 if args.quick else 5)
            notes["ui"] = [f"{ui_info['checkpoints']:,} checkpoints in {RUNS_UI} runs of {n // RUNS_UI:,} and a run "
                           f"'real' of 3 real saves with a 1,000-epoch history (filled in {ui_info['fill_s']} s; the server read "
                           f"their lineage {ui_info['warm_up_s']} s after start); "
                           f"server: `ckpt ui --port 0` in its own process, pages over HTTP; load average "
                           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"]
            continue
        if case.startswith("gpu_") and args.gpu_device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                notes[case] = ["skipped: no CUDA on this machine"]
                print(f"  {case}: skipped, no CUDA", flush=True)
                continue
        samples, infos[case], notes[case] = measure(case, reps, args)
        results[case] = {s: summarize(v) for s, v in samples.items()}
    meta = {"date": dt.date.today().isoformat(), "quick": args.quick, "reps": reps, "pause": args.pause,
            "cases": cases, "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "seconds": round(time.time() - started, 1), "note": args.note}
    rows = targets(results)
    md = markdown(results, rows, infos, notes, meta)
    os.makedirs(args.out, exist_ok=True)
    stem = args.name or ("quick" if args.quick else "partial" if args.only else "latest")
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "targets": rows, "info": infos, "notes": notes}, f, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(md)
    if stem == "latest":
        shutil.copyfile(os.path.join(args.out, f"{stem}.md"), os.path.join(args.out, f"{meta['date']}.md"))
    print()
    print(md)


if __name__ == "__main__":
    main()
