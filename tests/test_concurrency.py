"""Several processes saving to one store at the same moment: real processes, real files, real SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import fault_procs as fp  # noqa: E402
import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402

N_PROCS = 8
DUP_ROUNDS = 5
SAVER = fp.helper("concurrent_saver.py")
STEP_TIMEOUT = 120  # seconds for any one step of any one child (torch import on a loaded 2-core box)
BASE_BYTES = fs.shared_base().numel() * 4


def _start(args: list[str], name: str) -> fp.LineProc:
    return fp.LineProc([sys.executable, SAVER, *args], name=name)


def _finish_all(procs: list[fp.LineProc]) -> None:
    for p in procs:
        rc = p.finish(STEP_TIMEOUT)
        assert rc == 0, f"{p.name} exited {rc}: {p.seen[-5:]}\n{p.stderr[-4000:]}"
        assert "locked" not in p.stderr.lower(), p.stderr[-4000:]


@pytest.mark.timeout(600)
def test_eight_processes_save_at_once_with_shared_tensor(tmp_path):
    store_dir = str(tmp_path / "store")
    # Not created up front: the 8 children create the store together (the WAL switch must wait, not fail).
    procs = [_start(["rounds", store_dir, str(i)], f"saver-{i}") for i in range(N_PROCS)]
    try:
        for p in procs:
            p.expect("imported", STEP_TIMEOUT)
        for p in procs:  # all open (and run recovery on) the store at the same moment
            p.send("open")
        for p in procs:
            p.expect("ready", STEP_TIMEOUT)
        round1 = {}
        for p in procs:  # release all saves at once
            p.send("go1")
        for i, p in enumerate(procs):
            _, cid, new_bytes = p.expect("saved1", STEP_TIMEOUT).split()
            round1[i] = (cid, int(new_bytes))
        round2 = {}
        for p in procs:
            p.send("go2")
        for i, p in enumerate(procs):
            _, cid, new_bytes = p.expect("saved2", STEP_TIMEOUT).split()
            round2[i] = (cid, int(new_bytes))
        _finish_all(procs)  # exit 0: no "database is locked" (or anything else) surfaced
    finally:
        for p in procs:
            p.kill()

    with CheckpointStore(store_dir) as store:
        assert fs.non_committed_rows(store) == []
        infos = {i.id: i for i in store.list()}
        assert len(infos) == 2 * N_PROCS
        for rnd, saved in ((1, round1), (2, round2)):
            for idx, (cid, new_bytes) in saved.items():
                info = infos[cid]
                assert (info.run, info.epoch, info.new_bytes) == (f"worker-{idx}", rnd, new_bytes)
                fs.assert_bit_exact(store.load(cid), fs.worker_state(idx, rnd), f"worker-{idx}@{rnd}")

        base_hash = {s.hash for s in store.manifest(round1[0][0]).slots if s.nbytes == BASE_BYTES}
        assert len(base_hash) == 1
        (base_hash,) = base_hash

        def homes(saved):
            return {s.pack for cid, _ in saved.values() for s in store.manifest(cid).slots
                    if s.hash == base_hash}

        # Dedup under concurrency. Saves that begin (commit step A) before any save holding the shared
        # tensor has committed cannot know about it, so concurrent first writes of the same new tensor
        # may each store it: up to one copy per process here, since all 8 are released together. That
        # costs space, never correctness (each checkpoint points at its own complete copy).
        first = homes(round1)
        assert 1 <= len(first) <= N_PROCS, first
        # Once a copy is committed every later save reuses it: no second-round save writes the shared
        # tensor again (new_bytes is only its own changed 1 MiB tensor plus the pack header), and the
        # second round points only at copies from the first.
        assert all(nb < BASE_BYTES for _, nb in round2.values()), round2
        assert homes(round2) <= first
        # Each copy was written by exactly one first-round save (its own pack), which paid for it.
        assert sum(nb >= BASE_BYTES for _, nb in round1.values()) == len(first), (round1, first)
        print(f"\nshared tensor stored {len(first)}x by {N_PROCS} concurrent first saves; "
              f"round-2 new_bytes {sorted(nb for _, nb in round2.values())}")

        report = store.verify(full=True)
        assert report.ok, [str(p) for p in report.problems]
        assert report.checkpoints == 2 * N_PROCS


@pytest.mark.timeout(600)
def test_same_run_and_epoch_from_two_processes_exactly_one_wins(tmp_path):
    store_dir = str(tmp_path / "store")
    CheckpointStore(store_dir).close()  # created up front: this test is about the (run, epoch) claim
    procs = [_start(["dup", store_dir, str(i), str(DUP_ROUNDS)], f"dup-{i}") for i in range(2)]
    winners = {}
    try:
        for p in procs:
            p.expect("ready", STEP_TIMEOUT)
        for r in range(DUP_ROUNDS):
            for p in procs:
                p.send(f"go {r}")
            answers = [p.expect(("ok", "dup", "error"), STEP_TIMEOUT) for p in procs]
            kinds = sorted(a.split()[0] for a in answers)
            assert kinds == ["dup", "ok"], f"round {r}: {answers}"
            for idx, a in enumerate(answers):
                word, k, rest = a.split(maxsplit=2)
                assert int(k) == r
                if word == "ok":
                    winners[r] = (idx, rest)
        _finish_all(procs)
    finally:
        for p in procs:
            p.kill()

    with CheckpointStore(store_dir) as store:
        assert fs.non_committed_rows(store) == []
        infos = store.list()
        assert sorted(i.epoch for i in infos) == list(range(DUP_ROUNDS))
        for r, (idx, cid) in winners.items():
            info = store.get(f"dup@{r}")
            assert info.id == cid
            fs.assert_bit_exact(store.load(cid), fs.dup_state(idx, r), f"dup@{r}")
        report = store.verify(full=True)
        assert report.ok, [str(p) for p in report.problems]


@pytest.mark.timeout(120)
def test_opening_a_new_store_while_another_process_writes_waits(tmp_path):
    """Deterministic form of the concurrent-creation race: another process holds the write lock of the
    brand-new (still rollback-journal) index for 1.5 s, as a process creating the store does while it
    switches the file to WAL; opening must wait for it, like every other lock wait, not fail."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    holder_code = ("import sqlite3, sys, time\n"
                   "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                   "c.execute('BEGIN IMMEDIATE')\n"
                   "print('locked', flush=True)\n"
                   "time.sleep(1.5)\n"
                   "c.execute('COMMIT')\n")
    holder = subprocess.Popen([sys.executable, "-c", holder_code, str(store_dir / "index.sqlite")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with CheckpointStore(store_dir) as store:  # must wait ~1.5 s for the lock, then work
            waited = time.monotonic() - t0
            info = store.save("r", 0, fs.dup_state(0, 0), {"loss": 1.0})
            fs.assert_bit_exact(store.load(info.id), fs.dup_state(0, 0))
            assert store.verify(full=True).ok
        assert waited > 0.5, waited
    finally:
        assert holder.wait(timeout=30) == 0
