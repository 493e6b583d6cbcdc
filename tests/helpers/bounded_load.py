"""Load checkpoints and report how much the peak memory grew while doing it (tests/test_hostile_input.py).

    python bounded_load.py STORE WARMUP_ID ID...

Loads WARMUP_ID first (imports, thread pools, a normal read), then each ID, printing one line per ID:

    result {"id": ID, "error": "CorruptCheckpointError" | null, "message": ..., "rss_growth": BYTES,
            "seconds": S}

``rss_growth`` is how much the process's peak resident set (ru_maxrss) grew during that load: a
decompression bomb that was actually inflated shows up there, whatever allocator it went through.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from ckpt import CheckpointStore


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    store_path, warmup, *ids = sys.argv[1:]
    store = CheckpointStore(store_path, readonly=True)
    store.load(warmup)
    for cid in ids:
        before, t0 = peak(), time.monotonic()
        error = message = None
        try:
            store.load(cid)
        except Exception as exc:  # noqa: BLE001 - the test judges the type
            error, message = type(exc).__name__, str(exc)[:300]
        print("result " + json.dumps({"id": cid, "error": error, "message": message,
                                      "rss_growth": peak() - before, "seconds": time.monotonic() - t0}),
              flush=True)
    store.close()


if __name__ == "__main__":
    main()
