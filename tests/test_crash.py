"""SIGKILL a writer at random moments, dozens of times; the store must never lose or half-show a checkpoint.

Each iteration starts a writer (tests/helpers/writer.py) that opens the store (running recovery), resumes
the run at the epoch after ``store.latest()`` and saves ~7 MiB checkpoints back to back (two frozen
tensors that dedup, three that change every epoch). After a random delay (0-0.1 s after the fork for
~15% of writers, so the kill lands in start-up/recovery; otherwise 0-0.3 s after the writer reports
"ready", so it lands mid-save or between saves) the test SIGKILLs it, reopens the store and checks it.
``CKPT_CRASH_ITERATIONS`` (default 60) sets the number of kills; ``CKPT_CRASH_SEED`` replays a failing
run's timings (the seed is in the assertion messages).

The first few writers are fresh interpreters (``sys.executable writer.py STORE RUN``, killed once they
print "ready"); the rest are forked from a writer fork server that has torch already imported (separate
processes all the same, killed with SIGKILL by pid), because a fresh interpreter spends ~2.5 s importing
torch, which would make the kill loop take minutes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import fault_procs as fp  # noqa: E402
import fault_states as fs  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402

ITERATIONS = int(os.environ.get("CKPT_CRASH_ITERATIONS", "60"))
SEED = int(os.environ.get("CKPT_CRASH_SEED", str(random.randrange(2**32))))
CHECK_ALL = os.environ.get("CKPT_CRASH_CHECK_ALL") == "1"  # load every checkpoint after every kill
EXEC_KILLS = min(3, ITERATIONS)  # writers started as fresh interpreters
MAX_DELAY = 0.3
MAX_SAVES = 8  # per writer life; a writer that reaches it idles until killed
RUN = "crashy"
WRITER = fp.helper("writer.py")
_example = fs.crash_state(0)
_nbytes = {k: t.numel() * t.element_size()
           for k, t in (*_example["model"].items(), *_example["optimizer"].items())}
LOGICAL_SIZE = sum(_nbytes.values())
CHANGING_BYTES = LOGICAL_SIZE - _nbytes["embed"] - _nbytes["head"]  # what each save must write anew
del _example, _nbytes


def _read_log(path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _wait_ready(log, ctx: str, timeout: float = 120, marker: str = "ready") -> None:
    deadline = time.monotonic() + timeout
    while True:
        lines = _read_log(log)
        if any(line.startswith(marker) for line in lines):
            return
        assert not any(line.startswith("error") for line in lines), f"{ctx}: writer failed: {lines}"
        assert time.monotonic() < deadline, f"{ctx}: writer not ready within {timeout} s: {lines}"
        time.sleep(0.002)


def _kill_exec_writer(store_dir, log, delay: float) -> int:
    """A fresh interpreter: wait until it prints "ready" (torch imported, store open), then kill."""
    with open(log, "wb") as out, open(f"{log}.err", "wb") as err:
        p = subprocess.Popen([sys.executable, WRITER, str(store_dir), RUN, "--max-saves", str(MAX_SAVES)],
                             stdout=out, stderr=err, env=fp.child_env())
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("ready") for line in _read_log(log)):
            assert p.poll() is None, f"writer exited early ({p.returncode}): {open(f'{log}.err').read()}"
            assert time.monotonic() < deadline, "writer did not get ready within 120 s"
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        p.kill()  # SIGKILL
        p.wait(timeout=30)
    return p.returncode


class Tracker:
    """What the test knows so far: committed ids in order, epochs whose save returned, tensors checked."""

    def __init__(self, store_dir, rng: random.Random) -> None:
        self.store_dir = store_dir
        self.rng = rng
        self.ids: list[str] = []
        self.returned: set[int] = set()  # epochs for which store.save returned ("saved E")
        self.stats = {"mid_save": 0, "before_ready": 0, "between_saves": 0, "rolled_forward": 0,
                      "dropped": 0, "saves_returned": 0}

    def check_one(self, store, info) -> None:
        """The checkpoint is complete and exactly what was saved for its epoch."""
        assert info.status == "committed"
        assert info.run == RUN
        assert info.metrics == fs.crash_metrics(info.epoch), info
        assert info.logical_size == LOGICAL_SIZE, info
        fs.assert_bit_exact(store.load(info.id), fs.crash_state(info.epoch), f"{RUN}@{info.epoch}")

    def after_kill(self, lines: list[str], ctx: str) -> None:
        last = lines[-1] if lines else ""
        in_flight = None
        if last.startswith("saving"):
            self.stats["mid_save"] += 1
            in_flight = int(last.split()[1])
        elif not any(line.startswith("ready") for line in lines):
            self.stats["before_ready"] += 1
        else:
            self.stats["between_saves"] += 1
        for line in lines:
            if line.startswith("saved"):
                self.returned.add(int(line.split()[1]))
                self.stats["saves_returned"] += 1
            assert not line.startswith("error"), f"{ctx}: writer failed: {line}"

        with CheckpointStore(self.store_dir) as store:  # opening runs recovery: the writer is dead
            assert fs.non_committed_rows(store) == [], f"{ctx}: recovery left unfinished rows"
            infos = store.list()
            ids = [i.id for i in infos]
            # Committed checkpoints never disappear, change id or reorder; the count never decreases.
            assert ids[:len(self.ids)] == self.ids, f"{ctx}: committed checkpoints changed"
            # One writer at a time, each resuming after latest: epochs are exactly 0..n-1, no gaps or
            # duplicates, whichever step the kills interrupted.
            epochs = [i.epoch for i in infos]
            assert epochs == list(range(len(infos))), f"{ctx}: epochs {epochs}"
            # A save that returned is durable.
            lost = sorted(e for e in self.returned if e >= len(infos))
            assert not lost, f"{ctx}: saves of epochs {lost} returned but are not listed"
            if in_flight is not None:
                self.stats["rolled_forward" if in_flight < len(infos) else "dropped"] += 1
            # Every new checkpoint, the latest and one random older one load bit-exact; the rest were
            # checked when they appeared, are covered by verify below, and are all loaded again at the
            # end (CKPT_CRASH_CHECK_ALL=1 loads all of them after every kill: quadratic, for nightly).
            new = infos[len(self.ids):]
            older = infos[:len(self.ids)]
            sample = {i.id: i for i in [*new, infos[-1]] + self.rng.sample(older, min(1, len(older)))} \
                if infos else {}
            if CHECK_ALL:
                sample = {i.id: i for i in infos}
            for info in sample.values():
                self.check_one(store, info)
            report = store.verify(full=False)
            assert report.ok, f"{ctx}: {[str(p) for p in report.problems]}"
            self.ids = ids


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_during_saves_never_loses_or_corrupts(tmp_path):
    rng = random.Random(SEED)
    store_dir = tmp_path / "store"
    logs = tmp_path / "logs"
    logs.mkdir()
    tracker = Tracker(store_dir, rng)
    zygote = fp.LineProc([sys.executable, WRITER, "--serve"], name="writer fork server")
    live_pid = None  # a forked writer not yet killed and reaped (killed on the way out if a check fails)
    t0 = time.monotonic()
    try:
        for i in range(ITERATIONS):
            ctx = f"iteration {i} (CKPT_CRASH_SEED={SEED})"
            log = logs / f"{i:04d}.log"
            # ~15% are killed during start-up (store open, recovery of the previous kill): 0-0.1 s after
            # the fork. The rest 0-0.3 s after the writer is ready, i.e. somewhere in its save loop; timing
            # from "ready" keeps that true on a loaded machine where start-up may take longer than 0.3 s.
            early = i >= EXEC_KILLS and rng.random() < 0.15
            delay = rng.uniform(0, 0.1) if early else rng.uniform(0, MAX_DELAY)
            if i < EXEC_KILLS:
                rc = _kill_exec_writer(store_dir, log, delay)
                assert rc == -signal.SIGKILL, f"{ctx}: writer exited {rc} before the kill: {_read_log(log)}"
            else:
                zygote.send(f"spawn {store_dir} {RUN} {log} {MAX_SAVES}")
                pid = live_pid = int(zygote.expect("pid", 60).split()[1])
                if not early:
                    # A third of the kills are timed from the first returned save, so the loop also
                    # covers writers that already committed in this life, however slow the machine is.
                    _wait_ready(log, ctx, marker="saved" if rng.random() < 0.33 else "ready")
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)  # the child is not reaped yet, so the pid is still ours
                zygote.send(f"reap {pid}")
                status = int(zygote.expect(f"status {pid}", 60).split()[2])
                live_pid = None
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
                    f"{ctx}: writer was not killed (wait status {status}): {_read_log(log)}"
            tracker.after_kill(_read_log(log), ctx)
        zygote.send("quit")
        assert zygote.finish(30) == 0, zygote.stderr
    finally:
        if live_pid is not None:
            os.kill(live_pid, signal.SIGKILL)
        zygote.kill()
    loop_s = time.monotonic() - t0
    print(f"\n{ITERATIONS} kills in {loop_s:.1f} s, seed {SEED}: {tracker.stats}, "
          f"{len(tracker.ids)} checkpoints")

    st = tracker.stats
    assert st["saves_returned"] > 0 and len(tracker.ids) > 0, st
    # The kills must really hit saves in progress, not only idle moments.
    assert st["mid_save"] >= max(1, ITERATIONS // 10), st

    with CheckpointStore(store_dir) as store:
        infos = store.list()
        assert [i.id for i in infos] == tracker.ids
        for info in infos:
            tracker.check_one(store, info)
        # Dedup survived the kills: the frozen tensors live in exactly one pack, and no save after the
        # first committed one wrote them again.
        embed_hash = next(s.hash for s in store.manifest(infos[0].id).slots if s.nbytes == 4 * fs.MiB)
        homes = {s.pack for info in infos for s in store.manifest(info.id).slots if s.hash == embed_hash}
        assert len(homes) == 1, homes
        assert all(i.new_bytes < CHANGING_BYTES + 64 * 1024 for i in infos[1:]), \
            [(i.epoch, i.new_bytes) for i in infos]

        report = store.verify(full=True)
        assert report.ok, [str(p) for p in report.problems]
        assert report.checkpoints == len(infos)

        referenced = fs.referenced_packs(store)
        orphans = fs.pack_files(str(store_dir)) - referenced
        temps = fs.temp_files(str(store_dir))
        print(f"before gc: {len(orphans)} orphan packs, {len(temps)} temp files")
        gc = store.gc(grace_seconds=0)
        assert set(gc.packs) == orphans
        assert fs.pack_files(str(store_dir)) == referenced, "gc left unreferenced packs or removed used ones"
        assert fs.temp_files(str(store_dir)) == [], "gc left temp files of dead writers"
        report = store.verify(full=True)
        assert report.ok, [str(p) for p in report.problems]
        for info in store.list():
            tracker.check_one(store, info)
    print(f"total {time.monotonic() - t0:.1f} s")
