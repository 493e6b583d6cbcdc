"""The read-only query layer's start-up cost: wall time of a fresh process that imports ``ckpt.catalog``,
runs ``ckpt ls`` on a store of 1,000 checkpoints or ``ckpt --help``, and whether torch got imported.

Contenders:
    python  the floors: ``python -c pass`` and ``python -c "import torch"``
    ckpt    ``import ckpt.catalog`` ("n/a" while that module does not exist), ``ckpt ls``, ``ckpt --help``

Each is a separate process, timed from the outside (best of a few); the CLI runs through a wrapper that
records, at exit, which heavy modules were imported. The store is made once per harness run by ``setup``.
Run by benchmarks/run.py as its own worker script (``startup.py SYSTEM [--quick] --aux STORE``), so the
measuring process itself imports neither torch nor ckpt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HEAVY = ("torch", "numpy", "safetensors", "sqlalchemy", "transformers")

IMPORT_CATALOG = """
import json, sys, time
t = time.perf_counter()
try:
    import ckpt.catalog
    found = True
except ModuleNotFoundError as exc:
    if exc.name not in ("ckpt.catalog", "ckpt"):
        raise
    found = False
print(json.dumps({"found": found, "import_s": time.perf_counter() - t,
                  "modules": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)

CLI = """
import atexit, json, os, sys
out = os.environ["CKPT_BENCH_MODULES_OUT"]
atexit.register(lambda: open(out, "w").write(json.dumps([m for m in %r if m in sys.modules])))
from ckpt.cli import main
sys.argv = ["ckpt", *sys.argv[1:]]
main()
""" % (HEAVY,)


def setup(store_dir: str, quick: bool) -> None:
    """A store of 1,000 checkpoints (10 runs x 100 epochs) with two metrics each, through the public API."""
    import torch

    from ckpt import CheckpointStore
    runs, epochs = (2, 10) if quick else (10, 100)
    store = CheckpointStore(store_dir, compression="none")
    state = {"w": torch.zeros(4)}
    for r in range(runs):
        for e in range(epochs):
            state["w"].fill_(r * epochs + e)
            store.save(f"run-{r}", e, state, metrics={"val_loss": 1.0 / (e + 1), "val_acc": e / epochs})
    store.close()


def _wall(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return took, out


def _best(argv: list[str], k: int, env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    runs = [_wall(argv, env) for _ in range(k)]
    return min(r[0] for r in runs), runs[-1][1]


def run(system: str, quick: bool, store_dir: str | None) -> tuple[dict[str, float], dict[str, Any]]:
    py = sys.executable
    k = 1 if quick else 3
    out: dict[str, float] = {}
    info: dict[str, Any] = {}
    if system == "python":
        out["python_pass"], _ = _best([py, "-c", "pass"], k)
        out["import_torch"], _ = _best([py, "-c", "import torch"], k)
        return out, info
    took, res = _best([py, "-c", IMPORT_CATALOG], k)
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    if doc["found"]:
        out["import_catalog"] = took
        out["import_catalog_inproc"] = doc["import_s"]
        out["catalog_imports_torch"] = float("torch" in doc["modules"])
        info["catalog_modules"] = doc["modules"]
    else:
        info["import_catalog"] = "n/a: ckpt.catalog does not exist in this version"
    if store_dir is None:
        raise RuntimeError("the catalog case needs the store made by setup (--aux)")
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-cli-") as d:
        env = {**os.environ, "CKPT_BENCH_MODULES_OUT": os.path.join(d, "modules.json")}
        for name, args in (("ls", ["--store", store_dir, "ls"]), ("help", ["--help"])):
            out[f"cli_{name}"], res = _best([py, "-c", CLI, *args], k, env)
            modules = json.load(open(env["CKPT_BENCH_MODULES_OUT"]))
            out[f"cli_{name}_imports_torch"] = float("torch" in modules)
            info[f"cli_{name}_modules"] = modules
            if name == "ls":
                info["cli_ls_lines"] = len(res.stdout.splitlines())
    return out, info


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("system", choices=["setup", "python", "ckpt"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--aux", required=True, help="the store (made by setup, read by the others)")
    args, _ = p.parse_known_args()
    if args.system == "setup":
        setup(args.aux, args.quick)
        out, info = {}, {}
    else:
        out, info = run(args.system, args.quick, args.aux)
    print(json.dumps({**out, "_info": info}))


if __name__ == "__main__":
    main()
