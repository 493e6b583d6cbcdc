"""A save that runs into a file-size limit (RLIMIT_FSIZE), for tests/test_faults.py.

    python fsize_saver.py STORE LIMIT_BYTES

Saves "r"@0 (small), then lowers RLIMIT_FSIZE to LIMIT_BYTES with SIGXFSZ ignored, so a write past the
limit fails with EFBIG (a short write, then an error: what a full quota looks like to a writer), and
saves "r"@1, whose pack is larger than the limit. It prints ``facts {json}`` with what it sees right after
the failure, raises the limit again, runs gc(grace_seconds=0), saves "r"@1 again and prints
``resaved {json}``. Exit 0 unless something unexpected happened.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402


def state(epoch: int) -> dict:
    return {"frozen": fs.randn(16 * 1024, 3), "w": fs.randn(512 * 1024, 100 + epoch), "epoch": epoch}


def small_state() -> dict:
    return {"frozen": fs.randn(16 * 1024, 3), "w": fs.randn(1024, 99), "epoch": 0}


def main() -> None:
    store_path, limit = sys.argv[1], int(sys.argv[2])
    store = CheckpointStore(store_path)
    first = store.save("r", 0, small_state())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    facts: dict = {"first": first.id}
    try:
        store.save("r", 1, state(1))
        facts["raised"] = None
    except BaseException as exc:  # noqa: BLE001 - the test judges the type
        facts["raised"] = type(exc).__name__
        facts["mro"] = [c.__name__ for c in type(exc).__mro__]
        facts["message"] = str(exc)
    facts["listed"] = [[i.id, i.epoch] for i in store.list()]
    facts["temp_files"] = fs.temp_files(store_path)
    facts["packs"] = sorted(fs.pack_files(store_path))
    facts["manifests"] = sorted(fs.manifest_files(store_path))
    facts["loads"] = True
    try:
        fs.assert_bit_exact(store.load("r@0"), small_state())
    except Exception as exc:  # noqa: BLE001
        facts["loads"] = f"{type(exc).__name__}: {exc}"
    print("facts " + json.dumps(facts), flush=True)

    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # "free space"
    gc = store.gc(grace_seconds=0)
    info = store.save("r", 1, state(1))
    fs.assert_bit_exact(store.load(info.id), state(1))
    print("resaved " + json.dumps({"id": info.id, "gc_packs": gc.packs, "gc_temps": gc.temp_files}), flush=True)
    store.close()


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
