"""Writers, a reader and a maintainer (prune + gc) working on one store at once (tests/test_faults.py).

    python gc_churn.py writer STORE IDX SECONDS       saves run "churn-IDX", epoch 0, 1, 2... for SECONDS
    python gc_churn.py reader STORE SECONDS           loads "latest" (and random listed ids) for SECONDS
    python gc_churn.py maintainer STORE SECONDS       store.prune(keep_last=1 or 2) + store.gc(0) in a loop

Every process prints "started" once torch is imported and then waits for "go" on stdin, so the test
can release them together. Lines printed (one write each, flushed):

    writer:      saved EPOCH ID                 store.save returned: the checkpoint must be durable
    maintainer:  pruned ID                      a checkpoint prune removed (on purpose)
                 round N                        one prune + gc round done
    reader:      ok RUN EPOCH ID                a load returned, and every tensor was bit-exact
                 vanished KIND ID DETAIL        a load failed for a checkpoint that prune removed meanwhile
                 BAD DETAIL                     anything else: wrong tensors, an error for a checkpoint
                                                that is still committed, an unexpected exception type
    all:         summary {json}                 at the end
                 error TRACEBACK                an unexpected exception (exit 1)

States are pure functions of (writer, epoch) so the reader can check every tensor it gets:
"base" is the same in every save of every writer (stored once), "cycle" comes back every three epochs
and is shared by all writers (so saves keep reusing tensors from packs that prune and gc are about to
remove: the race gc must lose), "own" is new in every save.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fault_states as fs  # noqa: E402

RUN_PREFIX = "churn-"


@functools.lru_cache(maxsize=None)
def _base():
    return fs.randn(64 * 1024, 31_337)  # 256 KiB, identical everywhere


@functools.lru_cache(maxsize=8)
def _cycle(k: int):
    return fs.randn(32 * 1024, 47_000 + k)  # 128 KiB, value k % 3


def churn_state(idx: int, epoch: int) -> dict:
    import torch
    return {
        "model": {"base": _base().clone(), "cycle": _cycle(epoch % 3).clone(),
                  "own": fs.randn(16 * 1024, 1_000_000 * (idx + 1) + epoch),
                  "steps": torch.arange(epoch, epoch + 8)},
        "writer": idx, "epoch": epoch,
    }


def emit(msg: str) -> None:
    os.write(1, (msg + "\n").encode())


def _wait_go() -> None:
    emit("started")
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def writer(store_path: str, idx: int, seconds: float) -> dict:
    from ckpt import CheckpointStore
    _wait_go()
    store = CheckpointStore(store_path)
    run = f"{RUN_PREFIX}{idx}"
    deadline = time.monotonic() + seconds
    epoch = 0
    while time.monotonic() < deadline:
        state = churn_state(idx, epoch)
        if epoch % 2:  # odd epochs through the asynchronous path
            info = store.save(run, epoch, state, {"loss": 1.0 / (epoch + 1)}, blocking=False).result()
        else:
            info = store.save(run, epoch, state, {"loss": 1.0 / (epoch + 1)})
        emit(f"saved {epoch} {info.id}")
        epoch += 1
    store.close()
    return {"saves": epoch}


def maintainer(store_path: str, seconds: float) -> dict:
    from ckpt import CheckpointStore
    _wait_go()
    store = CheckpointStore(store_path)
    deadline = time.monotonic() + seconds
    rounds = pruned = gc_packs = 0
    while time.monotonic() < deadline:
        try:
            plan = store.prune(keep_last=1 if rounds % 2 else 2)
        except Exception as exc:  # prune on an empty store (no run yet) is the only expected failure
            from ckpt.errors import CheckpointNotFoundError
            if not isinstance(exc, CheckpointNotFoundError):
                raise
            time.sleep(0.05)
            continue
        for info in plan.remove:
            emit(f"pruned {info.id}")
        pruned += len(plan.remove)
        gc_packs += len(store.gc(grace_seconds=0).packs)
        rounds += 1
        emit(f"round {rounds}")
    store.close()
    return {"rounds": rounds, "pruned": pruned, "gc_packs": gc_packs}


def _listed(store, cid: str) -> bool:
    from ckpt.errors import CheckpointNotFoundError
    try:
        store.get(cid)
        return True
    except CheckpointNotFoundError:
        return False


def reader(store_path: str, seconds: float) -> dict:
    from ckpt import CheckpointStore
    from ckpt.errors import CheckpointNotFoundError, CkptError
    _wait_go()
    store = CheckpointStore(store_path, readonly=True)  # the test created the store
    rng = random.Random(os.getpid())
    counts = {"ok": 0, "notfound": 0, "vanished": 0, "bad": 0, "fallback_warnings": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        selector = "latest"
        if rng.random() < 0.5:  # half the time an explicit id, which prune may remove meanwhile
            try:
                infos = store.list()
            except CkptError as exc:
                emit(f"BAD list() failed: {type(exc).__name__}: {exc}")
                counts["bad"] += 1
                continue
            if infos:
                selector = rng.choice(infos).id
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                state, info = store.load(selector, with_info=True)
            except CheckpointNotFoundError:
                counts["notfound"] += 1  # nothing saved yet, or the id was pruned before we resolved it
                continue
            except CkptError as exc:
                # Allowed only for a checkpoint that is gone from the index by now (an explicit id that
                # prune removed), or, for "latest", when it was transient: one of the next tries works.
                if selector != "latest":
                    gone = not _listed(store, selector)
                else:
                    gone = False
                    for _retry in range(3):
                        try:
                            store.load("latest")
                            gone = True
                            break
                        except CkptError:
                            continue
                if gone:
                    counts["vanished"] += 1
                    emit(f"vanished {type(exc).__name__} {selector} {str(exc)[:200]!r}")
                else:
                    counts["bad"] += 1
                    emit(f"BAD load({selector!r}) raised {type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - anything else is a bug
                counts["bad"] += 1
                emit(f"BAD load({selector!r}) raised {type(exc).__name__}: {exc}")
                continue
        fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning) and "damaged" in str(w.message)]
        if fallbacks:
            counts["fallback_warnings"] += 1
            # A "damaged" warning is only acceptable for a checkpoint that prune removed meanwhile.
            for w in fallbacks:
                skipped = str(w.message).split()[1]  # "checkpoint SHORTID (...) is damaged ..."
                still = [i for i in store.list() if i.id.startswith(skipped)]
                if still:
                    counts["bad"] += 1
                    emit(f"BAD load skipped checkpoint {skipped}, which is still committed: {w.message}")
                else:
                    emit(f"vanished fallback {skipped} {str(w.message)[:200]!r}")
        idx = int(info.run[len(RUN_PREFIX):])
        try:
            fs.assert_bit_exact(state, churn_state(idx, info.epoch), f"{info.run}@{info.epoch}")
        except AssertionError as exc:
            counts["bad"] += 1
            emit(f"BAD wrong tensors from {info.id} ({info.run}@{info.epoch}): {exc}")
            continue
        counts["ok"] += 1
        emit(f"ok {info.run} {info.epoch} {info.id}")
    store.close()
    return counts


def main() -> None:
    role, store_path, *rest = sys.argv[1:]
    try:
        if role == "writer":
            summary = writer(store_path, int(rest[0]), float(rest[1]))
        elif role == "maintainer":
            summary = maintainer(store_path, float(rest[0]))
        elif role == "reader":
            summary = reader(store_path, float(rest[0]))
        else:
            raise SystemExit(f"unknown role {role!r}")
    except BaseException:
        emit("error " + traceback.format_exc().replace("\n", " | "))
        traceback.print_exc()
        sys.exit(1)
    emit("summary " + json.dumps(summary))


if __name__ == "__main__":
    main()
