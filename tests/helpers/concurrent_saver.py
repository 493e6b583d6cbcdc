"""One of several processes saving to one store at once (tests/test_concurrency.py).

    python concurrent_saver.py rounds STORE IDX   # own run "worker-IDX", saves on "go1" / "go2"
    python concurrent_saver.py dup STORE IDX K    # K saves of run "dup" epoch k, on "go k"

Every step waits for a line on stdin, so the test can release all processes at the same moment, and
answers on stdout. Any unexpected exception is printed as "error ..." and exits 1.
"""

from __future__ import annotations

import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore, DuplicateCheckpointError  # noqa: E402


def wait_for(word: str) -> None:
    line = sys.stdin.readline()
    if line.strip() != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


def rounds(store_path: str, idx: int) -> None:
    print("imported", flush=True)
    wait_for("open")  # every process opens the (new) store at the same moment
    store = CheckpointStore(store_path)
    print("ready", flush=True)
    for rnd in (1, 2):
        wait_for(f"go{rnd}")
        info = store.save(f"worker-{idx}", rnd, fs.worker_state(idx, rnd), {"loss": 1.0 / (idx + rnd)})
        print(f"saved{rnd} {info.id} {info.new_bytes}", flush=True)
    store.close()


def dup(store_path: str, idx: int, k: int) -> None:
    store = CheckpointStore(store_path)
    print("ready", flush=True)
    for r in range(k):
        wait_for(f"go {r}")
        try:
            info = store.save("dup", r, fs.dup_state(idx, r), {"loss": float(r)})
        except DuplicateCheckpointError as exc:
            print(f"dup {r} {str(exc)[:200]!r}", flush=True)
        else:
            print(f"ok {r} {info.id}", flush=True)
    store.close()


def main() -> None:
    mode, store_path, idx, *rest = sys.argv[1:]
    try:
        if mode == "rounds":
            rounds(store_path, int(idx))
        else:
            dup(store_path, int(idx), int(rest[0]))
    except BaseException:
        print("error " + traceback.format_exc().replace("\n", " | "), flush=True)
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
