"""A training loop that saves and then prunes, to be SIGKILLed anywhere (tests/test_faults.py).

    python save_prune.py --serve

is a fork server (like writer.py): it imports torch and ckpt once, then for each stdin line
``spawn STORE LOG`` forks a child that logs to LOG and answers ``pid PID``; ``reap PID`` waits for the
child and answers ``status PID WAITSTATUS``; ``quit`` ends it. The child opens STORE (recovery), resumes
run "sp" after its latest checkpoint and loops:

    saving E          about to call store.save for epoch E
    saved E ID        the save returned
    pruning           about to call store.prune(keep_last=1), which deletes the previous checkpoint
    pruned N          prune returned, N checkpoints removed

so the test can tell where each kill landed. States are ``sp_state(epoch)``.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402
from ckpt.errors import SelectorError  # noqa: E402

RUN = "sp"
MAX_SAVES = 30  # per life; then idle until killed


def sp_state(epoch: int) -> dict:
    return {"frozen": fs.randn(128 * 1024, 5), "w": fs.randn(64 * 1024, 10_000 + epoch), "epoch": epoch}


def emit(fd: int, msg: str) -> None:
    os.write(fd, (msg + "\n").encode())


def loop(store_path: str, fd: int) -> None:
    store = CheckpointStore(store_path)
    try:
        epoch = store.latest(run=RUN).epoch + 1
    except SelectorError:
        epoch = 0
    emit(fd, f"ready {epoch}")
    for _ in range(MAX_SAVES):
        emit(fd, f"saving {epoch}")
        info = store.save(RUN, epoch, sp_state(epoch), {"loss": 1.0 / (epoch + 1)})
        emit(fd, f"saved {epoch} {info.id}")
        emit(fd, "pruning")
        plan = store.prune(keep_last=1, run=RUN)
        emit(fd, f"pruned {len(plan.remove)}")
        epoch += 1
    emit(fd, "idle")
    time.sleep(120)
    os._exit(3)


def serve() -> None:
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "spawn":
            store_path, log = args
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 0
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    loop(store_path, fd)
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


if __name__ == "__main__":
    serve()
