"""Checkpoint writer for the SIGKILL loop in tests/test_crash.py.

    python writer.py STORE RUN [--max-saves N]

opens STORE (which runs crash recovery), resumes RUN at the epoch after its latest checkpoint and saves
``fault_states.crash_state(epoch)`` in a loop, printing (unbuffered, one write per line)

    ready E        store open, first epoch to save is E
    saving E       about to call store.save for epoch E (odd epochs with blocking=False, then .result())
    saved E ID     the save returned (the checkpoint must now be durable)
    idle           --max-saves reached; waits to be killed

so the test can tell where a SIGKILL landed.

    python writer.py --serve

is a fork server: it imports torch and ckpt once, then for each stdin line ``spawn STORE RUN LOG MAX``
forks a writer (a real, separate process) that logs to LOG and answers ``pid PID``; ``reap PID`` waits
for that child and answers ``status PID WAITSTATUS``. A fresh interpreter costs ~2.5 s of torch import,
so forking is what lets a CI run afford 60+ kills (and a nightly run hundreds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402
from ckpt.errors import SelectorError  # noqa: E402

IDLE_LIMIT_S = 120  # a writer nobody kills gives up eventually instead of lingering


def emit(fd: int, msg: str) -> None:
    os.write(fd, (msg + "\n").encode())


def write_loop(store_path: str, run: str, fd: int, max_saves: int) -> None:
    store = CheckpointStore(store_path)  # opening recovers what the previous (killed) writer left
    try:
        epoch = store.latest(run=run).epoch + 1
    except SelectorError:
        epoch = 0
    emit(fd, f"ready {epoch}")
    for _ in range(max_saves):
        state = fs.crash_state(epoch)
        emit(fd, f"saving {epoch}")
        if epoch % 2:  # odd epochs through the asynchronous path (commit on a background thread)
            info = store.save(run, epoch, state, fs.crash_metrics(epoch), blocking=False).result()
        else:
            info = store.save(run, epoch, state, fs.crash_metrics(epoch))
        emit(fd, f"saved {epoch} {info.id}")
        epoch += 1
    emit(fd, "idle")
    time.sleep(IDLE_LIMIT_S)
    os._exit(3)


def serve() -> None:
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "spawn":
            store_path, run, log, max_saves = args
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:  # the writer: never returns into this loop
                code = 0
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    write_loop(store_path, run, fd, int(max_saves))
                except BaseException:
                    emit(fd, "error " + traceback.format_exc().replace("\n", " | "))
                    code = 1
                os._exit(code)
            print(f"pid {pid}", flush=True)
        elif cmd == "reap":
            pid = int(args[0])
            _, status = os.waitpid(pid, 0)
            print(f"status {pid} {status}", flush=True)
        elif cmd == "quit":
            break


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("store", nargs="?")
    p.add_argument("run", nargs="?")
    p.add_argument("--max-saves", type=int, default=10**9)
    p.add_argument("--serve", action="store_true")
    a = p.parse_args()
    if a.serve:
        serve()
    else:
        write_loop(a.store, a.run, sys.stdout.fileno(), a.max_saves)


if __name__ == "__main__":
    main()
