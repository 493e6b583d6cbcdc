"""A second process for tests/test_locks.py and tests/test_storage_contract.py.

    python storage_proc.py lock URL shared|exclusive STALE_AFTER TIMEOUT
        take the lock, print "ACQUIRED <generation>", then obey stdin lines: "check" (prints OK or
        LOST), "release" (prints RELEASED and exits). End of input releases too.
    python storage_proc.py sink URL KEY NBYTES
        stream NBYTES into a sink (1 MiB writes), print "WRITTEN", then hang before commit (to be
        SIGKILLed mid-upload).
    python storage_proc.py efbig DIR LIMIT NBYTES
        lower RLIMIT_FSIZE to LIMIT (SIGXFSZ ignored), stream NBYTES into a local sink and print the
        error it gets as "ERROR <type> <message>" and the files left in DIR as "LEFT <json>".
    python storage_proc.py imports
        import the storage and lock modules; print the heavy modules that came along ("HEAVY [...]").

The ``ckpt`` package is stubbed so that its ``__init__`` (which imports torch today) does not run: the
process starts fast, and the storage and lock modules are shown to need neither torch nor numpy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "ckpt"))
if "ckpt" not in sys.modules:
    pkg = types.ModuleType("ckpt")
    pkg.__path__ = [SRC]
    sys.modules["ckpt"] = pkg

from ckpt.storage import open_storage  # noqa: E402


def lock(url: str, kind: str, stale_after: str, timeout: str) -> None:
    from ckpt.locks import Locks
    locks = Locks(open_storage(url), stale_after=float(stale_after), timeout=float(timeout))
    held = locks.shared("test") if kind == "shared" else locks.exclusive("test")
    print(f"ACQUIRED {held.generation} {held.name}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "check":
            try:
                held.check()
                print("OK", flush=True)
            except Exception as exc:
                print(f"LOST {type(exc).__name__}", flush=True)
        elif cmd == "release":
            break
    held.release()
    print("RELEASED", flush=True)


def sink(url: str, key: str, nbytes: str) -> None:
    storage = open_storage(url)
    s = storage.open_sink(key, reserve=64)
    block = os.urandom(1 << 20)
    left = int(nbytes)
    while left > 0:
        s.write(block[:min(left, len(block))])
        left -= len(block)
    print("WRITTEN", flush=True)
    time.sleep(3600)


def efbig(directory: str, limit: str, nbytes: str) -> None:
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.RLIM_INFINITY))
    storage = open_storage(directory)
    try:
        s = storage.open_sink("packs/big.bin")
        s.write(bytes(int(nbytes)))
        s.commit()
        print("ERROR none", flush=True)
    except Exception as exc:
        print(f"ERROR {type(exc).__name__} {exc}", flush=True)
    left = [os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs]
    print(f"LEFT {json.dumps(left)}", flush=True)


def imports() -> None:
    import ckpt.locks  # noqa: F401
    import ckpt.storage.fsspec_backend  # noqa: F401
    import ckpt.storage.local  # noqa: F401
    import ckpt.storage.s3  # noqa: F401
    print(f"HEAVY {json.dumps(sorted(m for m in ('torch', 'numpy') if m in sys.modules))}", flush=True)


if __name__ == "__main__":
    {"lock": lock, "sink": sink, "efbig": efbig, "imports": imports}[sys.argv[1]](*sys.argv[2:])
