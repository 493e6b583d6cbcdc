"""Processes for tests/test_storage_truth.py (issue 10, "storage is the truth"), forked from one server.

    python truth_worker.py --serve

imports the heavy third-party modules once (torch, numpy, SQLAlchemy, s3fs, psycopg) but *not* ckpt,
then answers stdin lines:

    spawn JSON      fork a worker; JSON = {"role": ..., "log": PATH, "env": {...}, **role arguments}.
                    The child applies "env" first (CKPT_HOST, CKPT_LOCK_TIMEOUT...), then imports ckpt,
                    so every worker can play its own host. Answers ``pid PID``.
    reap PID        wait for that child; answers ``status PID WAITSTATUS``
    quit

Every worker writes its lines to its own log file (one ``os.write`` per line, so a SIGKILL never
leaves half a line), waits for the ``go`` file when one is given, and ends with ``summary JSON`` or
``error TRACEBACK`` (exit 1). Lines:

    ready                       store open, waiting for the go file
    saved RUN EPOCH ID          store.save returned: the checkpoint must be durable and listed
    removed ID                  a checkpoint rm/prune removed on purpose
    gc PACKS                    one gc(grace_seconds=0) done, PACKS packs freed
    reindex N                   one reindex done
    ok RUN EPOCH ID             a load returned, every tensor bit-exact
    expected TYPE DETAIL        an error the test allows (see ALLOWED)
    BAD DETAIL                  anything else: wrong bits, an unexpected error type, a false "damaged"

States are pure functions of (run index, epoch) (:func:`truth_state`), so any process can check what
it loads: "base" is in every save of every run (stored once), "cycle" comes back every three epochs
in every run (saves keep reusing packs that prune/rm/gc are deciding about), "common" (1.25 MiB, at
least the claim size) is shared by every run at the same epoch // 2 (concurrent first writers), "own"
is new in every save.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fault_states import assert_bit_exact  # noqa: E402,F401  (tests call it as truth_worker.assert_bit_exact)
from fault_states import randn as _randn  # noqa: E402

MiB = 1 << 20
RUN_PREFIX = "truth-"
#: Errors a role may see without it being a bug, by role.
ALLOWED = {
    "saver": ("DuplicateCheckpointError",),
    "pruner": ("CheckpointNotFoundError",),
    "remover": ("CheckpointNotFoundError",),
    "loader": ("CheckpointNotFoundError",),
    "gc": (),
    "reindexer": (),
}


# ------------------------------------------------------------------------------------------ states
_CACHE: dict = {}


def _cached(key, make):
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = make()
    return _CACHE[key]


def truth_state(run_idx: int, epoch: int) -> dict:
    import torch
    return {
        "model": {
            "base": _cached(("base",), lambda: _randn(64 * 1024, 31_337)).clone(),            # 256 KiB
            "cycle": _cached(("cycle", epoch % 3), lambda: _randn(32 * 1024, 47_000 + epoch % 3)).clone(),
            "common": _cached(("common", epoch // 2),
                              lambda: _randn(320 * 1024, 90_000 + epoch // 2)).clone(),     # 1.25 MiB
            "own": _randn(16 * 1024, 1_000_000 * (run_idx + 1) + epoch),                    # 64 KiB
            "steps": torch.arange(epoch, epoch + 8),
        },
        "run": run_idx, "epoch": epoch, "note": f"{run_idx}/{epoch}",
    }


def run_name(idx: int) -> str:
    return f"{RUN_PREFIX}{idx}"


def run_index(run: str) -> int:
    return int(run[len(RUN_PREFIX):])


# ------------------------------------------------------------------------------------------ workers
class Worker:
    def __init__(self, fd: int, spec: dict) -> None:
        self.fd, self.spec = fd, spec
        self.role = spec["role"]
        self.counts: dict[str, int] = {}
        self.rng = random.Random(spec.get("seed", os.getpid()))

    def emit(self, msg: str) -> None:
        os.write(self.fd, (msg.replace("\n", " | ") + "\n").encode())

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def open(self):
        from ckpt import CheckpointStore
        return CheckpointStore(self.spec["store"], index=self.spec.get("index"),
                               compression=self.spec.get("compression", "auto"))

    def wait_go(self) -> None:
        go = self.spec.get("go")
        self.emit("ready")
        if not go:
            return
        deadline = time.monotonic() + 300
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                raise SystemExit("no go file within 300 s")
            time.sleep(0.001)

    def failed(self, what: str, exc: BaseException) -> None:
        """Classify an exception: allowed for this role, or BAD."""
        from ckpt.errors import CkptError
        name = type(exc).__name__
        if isinstance(exc, CkptError) and name in ALLOWED.get(self.role, ()):
            self.count(f"expected_{name}")
            self.emit(f"expected {name} {what}: {str(exc)[:300]}")
        else:
            self.count("bad")
            kind = "typed" if isinstance(exc, CkptError) else "UNTYPED"
            self.emit(f"BAD {kind} {name} in {what}: {exc} :: "
                      + traceback.format_exc().replace("\n", " | ")[-1500:])

    def pause(self, low: float, high: float) -> None:
        """Between two maintenance operations (scaled by ``pace``: slower storage, fewer of them)."""
        time.sleep(self.rng.uniform(low, high) * float(self.spec.get("pace", 1.0)))

    def deadline(self) -> float:
        return time.monotonic() + float(self.spec.get("seconds", 0))


def role_saver(w: Worker) -> None:
    store = w.open()
    idx = int(w.spec["idx"])
    run = run_name(idx)
    w.wait_go()
    end = w.deadline()
    epoch = 0
    while time.monotonic() < end:
        state = truth_state(idx, epoch)
        t0 = time.monotonic()
        try:
            if epoch % 2:
                info = store.save(run, epoch, state, {"loss": 1.0 / (epoch + 1)}, blocking=False).result()
            else:
                info = store.save(run, epoch, state, {"loss": 1.0 / (epoch + 1)})
            w.emit(f"saved {run} {epoch} {info.id}")
            w.count("saves")
            w.counts["max_save_ms"] = max(w.counts.get("max_save_ms", 0), int((time.monotonic() - t0) * 1000))
        except Exception as exc:  # noqa: BLE001
            w.failed(f"save {run}@{epoch}", exc)
        epoch += 1
    store.close()


def role_pruner(w: Worker) -> None:
    store = w.open()
    runs = int(w.spec["runs"])
    w.wait_go()
    end = w.deadline()
    while time.monotonic() < end or (not w.counts and time.monotonic() < end + 120):  # once, however slow
        run = run_name(w.rng.randrange(runs)) if w.rng.random() < 0.7 else None
        try:
            if w.spec.get("sync"):
                store.sync()
            plan = store.prune(keep_last=w.rng.choice((1, 2, 3)), run=run)
            for info in plan.remove:
                w.emit(f"removed {info.id}")
            w.count("prunes")
            w.count("deletions", len(plan.remove))
        except Exception as exc:  # noqa: BLE001
            w.failed(f"prune run={run}", exc)
        w.pause(0.05, 0.3)
    store.close()


def role_remover(w: Worker) -> None:
    store = w.open()
    w.wait_go()
    end = w.deadline()
    while time.monotonic() < end:
        w.pause(0.1, 0.4)
        try:
            if w.spec.get("sync"):
                store.sync()
            infos = store.list()
            if len(infos) < 4:
                continue
            victim = w.rng.choice(infos[:-2])
            store.delete(victim, free=w.rng.random() < 0.5)  # half the time its packs are left to gc
            w.emit(f"removed {victim.id}")
            w.count("deletions")
        except Exception as exc:  # noqa: BLE001
            w.failed("rm", exc)
    store.close()


def role_gc(w: Worker) -> None:
    store = w.open()
    w.wait_go()
    end = w.deadline()
    while time.monotonic() < end or (not w.counts and time.monotonic() < end + 120):  # once, however slow
        w.pause(0.1, 0.5)
        try:
            report = store.gc(grace_seconds=0)
            w.emit(f"gc {len(report.packs)}")
            w.count("gcs")
            w.count("gc_packs", len(report.packs))
        except Exception as exc:  # noqa: BLE001
            w.failed("gc", exc)
    store.close()


def role_reindexer(w: Worker) -> None:
    store = w.open()
    w.wait_go()
    end = w.deadline()
    while time.monotonic() < end or (not w.counts and time.monotonic() < end + 120):  # once, however slow
        w.pause(0.5, 1.5)
        try:
            n = store.reindex()
            w.emit(f"reindex {n}")
            w.count("reindexes")
        except Exception as exc:  # noqa: BLE001
            w.failed("reindex", exc)
    store.close()


def _listed(store, cid: str) -> bool:
    from ckpt.errors import CheckpointNotFoundError
    try:
        store.sync()
        store.get(cid)
        return True
    except CheckpointNotFoundError:
        return False


def role_loader(w: Worker) -> None:
    from ckpt.errors import CkptError
    store = w.open()
    w.wait_go()
    end = w.deadline()
    runs = int(w.spec["runs"])
    while time.monotonic() < end or (not w.counts and time.monotonic() < end + 120):  # once, however slow
        try:
            if w.spec.get("sync") and w.rng.random() < 0.5:
                store.sync()
            if w.rng.random() < 0.5:
                infos = store.list()
                selector = w.rng.choice(infos).id if infos else "latest"
                run = None
            else:
                selector, run = "latest", run_name(w.rng.randrange(runs))
        except Exception as exc:  # noqa: BLE001
            w.failed("list", exc)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                state, info = store.load(selector, run=run, with_info=True)
            except Exception as exc:  # noqa: BLE001
                w.failed(f"load {selector} run={run}", exc)
                continue
        for warning in caught:
            text = str(warning.message)
            if "damaged" in text:  # acceptable only when the skipped checkpoint is gone by now
                skipped = text.split()[1]
                try:
                    still = [i.id for i in store.list() if i.id.startswith(skipped)]
                except CkptError:
                    still = ["?"]
                if still:
                    w.count("bad")
                    w.emit(f"BAD false damage warning for a listed checkpoint: {text}")
                else:
                    w.count("fallbacks")
        try:
            assert_bit_exact(state, truth_state(run_index(info.run), info.epoch), f"{info.run}@{info.epoch}")
        except AssertionError as exc:
            w.count("bad")
            w.emit(f"BAD wrong tensors from {info.id} ({info.run}@{info.epoch}): {exc}")
            continue
        w.count("restored")
        w.emit(f"ok {info.run} {info.epoch} {info.id}")
    store.close()


# -- single-shot roles for the smaller tests --------------------------------------------------------
def role_first_writer(w: Worker) -> None:
    """Save one shared new tensor (``mib`` MiB, same in every process) plus a small own one, at go."""
    import torch
    store = w.open()
    idx = int(w.spec["idx"])
    shared = _randn(int(w.spec["mib"]) * MiB // 4, 777_777)
    state = {"shared": shared, "own": _randn(1024, 5_000 + idx), "idx": idx}
    torch.set_num_threads(1)
    w.wait_go()
    t0 = time.perf_counter()
    info = store.save(f"first-{idx}", 0, state)
    w.emit(f"saved first-{idx} 0 {info.id} {time.perf_counter() - t0:.4f} {info.new_bytes}")
    store.close()


def role_big_saver(w: Worker) -> None:
    """Save one big state (``mib`` MiB, own values) under run ``run``/epoch: killed mid-save by the test."""
    store = w.open()
    seed = int(w.spec.get("seed", 1))
    state = {"w": _randn(int(w.spec["mib"]) * MiB // 4, seed), "epoch": int(w.spec["epoch"])}
    w.emit(f"saving {w.spec['run']} {w.spec['epoch']}")
    info = store.save(w.spec["run"], int(w.spec["epoch"]), state)
    w.emit(f"saved {w.spec['run']} {w.spec['epoch']} {info.id}")
    store.close()


def role_gc_loop(w: Worker) -> None:
    """gc(grace 0) forever (the test kills it while it holds the exclusive lock)."""
    store = w.open()
    w.emit("ready")
    while True:
        store.gc(grace_seconds=0)
        w.count("gcs")


def role_prune_once(w: Worker) -> None:
    store = w.open()
    w.wait_go()
    plan = store.prune(keep_last=int(w.spec["keep_last"]), run=w.spec["run"])
    for info in plan.remove:
        w.emit(f"removed {info.id}")
    store.close()


def role_maint_once(w: Worker) -> None:
    """Open (default index: a per-host cache for a remote store), then at go: gc(grace 0) and prune."""
    store = w.open()
    w.wait_go()
    report = store.gc(grace_seconds=0)
    w.emit(f"gc {len(report.packs)}")
    plan = store.prune(keep_last=int(w.spec["keep_last"]), run=w.spec["run"])
    for info in plan.remove:
        w.emit(f"removed {info.id}")
    store.close()


def role_rm_once(w: Worker) -> None:
    store = w.open()
    info = store.get(w.spec["id"])  # resolved first, as a script that listed, then deletes
    w.wait_go()
    removed = store.delete(info)
    w.emit(f"removed {removed.id}")
    store.close()


ROLES = {
    "saver": role_saver, "pruner": role_pruner, "remover": role_remover, "gc": role_gc,
    "reindexer": role_reindexer, "loader": role_loader, "first_writer": role_first_writer,
    "big_saver": role_big_saver, "gc_loop": role_gc_loop, "prune_once": role_prune_once,
    "rm_once": role_rm_once, "maint_once": role_maint_once,
}


def run_worker(spec: dict) -> int:
    fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    import torch
    torch.set_num_threads(1)  # many workers on few cores
    w = Worker(fd, spec)
    try:
        ROLES[spec["role"]](w)
    except BaseException:
        w.emit("error " + traceback.format_exc())
        return 1
    w.emit("summary " + json.dumps(w.counts))
    return 0


def serve() -> None:
    import numpy  # noqa: F401
    import sqlalchemy  # noqa: F401
    import torch  # noqa: F401
    # Not s3fs/fsspec: fsspec reads its FSSPEC_* configuration at import, and a test's S3 endpoint
    # reaches the workers through "env" (applied before they import anything of ckpt's).
    for optional in ("alembic", "alembic.runtime.migration", "psycopg", "blake3", "xxhash", "zstandard",
                     "safetensors"):
        try:
            __import__(optional)
        except ImportError:
            pass
    assert not any(m == "ckpt" or m.startswith(("ckpt.", "fsspec")) for m in sys.modules), "imported too early"
    print("serving", flush=True)
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "spawn":
            spec = json.loads(rest)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.environ.update(spec.get("env", {}))
                    code = run_worker(spec)
                finally:
                    os._exit(code)
            print(f"pid {pid}", flush=True)
        elif cmd == "reap":
            pid = int(rest)
            _, status = os.waitpid(pid, 0)
            print(f"status {pid} {status}", flush=True)
        elif cmd == "quit":
            break


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        raise SystemExit(__doc__)
