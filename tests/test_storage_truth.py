"""Issue 10, "storage is the truth": no committed checkpoint is lost to a stale, foreign or rebuilding
index, to a tensor that changes mid-save, to concurrent first writers or to a killed lock holder.

Real processes (forked from one server that imported torch once: tests/helpers/truth_worker.py), real
SIGKILL, real files, a real moto S3 server and a real PostgreSQL (tests/servers.py). Several processes
play different hosts on this machine: each gets its own CKPT_HOST and its own index.

Counts and measurements (stress runs, concurrent first writers, lock overhead) are printed (``pytest
-s``) and merged into a JSON file whose path is printed: the closing note of issue 10 quotes them.
Nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import truth_worker as tw  # noqa: E402

from ckpt import CheckpointStore  # noqa: E402
from ckpt.errors import (CheckpointNotFoundError, CorruptCheckpointError, IndexMismatchError,  # noqa: E402
                         MissingBlobError)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "truth_worker.py")
STEP_TIMEOUT = 180  # any one step of a child on a loaded 2-core machine
STRESS_SECONDS = float(os.environ.get("CKPT_STRESS_SECONDS", "20"))
RESULTS = os.environ.get("CKPT_TRUTH_RESULTS", os.path.join(tempfile.gettempdir(), "ckpt-storage-truth.json"))
MiB = 1 << 20


# ============================================================================================ plumbing

class Server:
    """The fork server: every worker is a real process forked from it (torch already imported)."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, WORKER, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self._lock = threading.Lock()
        self._expect("serving")

    def _expect(self, prefix: str) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(prefix), f"fork server said {line!r}, expected {prefix!r}"
        return line.strip()

    def spawn(self, role: str, log: str, env: dict[str, str] | None = None, **spec) -> int:
        """Fork a worker; ``env`` is applied in the child before it imports ckpt."""
        full_env = {k: v for k, v in os.environ.items()
                    if k.startswith(("AWS_", "FSSPEC_", "CKPT_"))}  # the S3 endpoint, test settings
        full_env.update(env or {})
        msg = json.dumps({"role": role, "log": log, "env": full_env, **spec})
        with self._lock:
            self.proc.stdin.write(f"spawn {msg}\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            return int(self._expect("pid").split()[1])

    def reap(self, pid: int) -> int:
        with self._lock:
            self.proc.stdin.write(f"reap {pid}\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            return int(self._expect(f"status {pid}").split()[2])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def read_log(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def wait_line(path: str, prefix: str, timeout: float = STEP_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        lines = read_log(path)
        errors = [x for x in lines if x.startswith("error")]
        assert not errors, f"{os.path.basename(path)} failed: {errors[0][:3000]}"
        for x in lines:
            if x.startswith(prefix):
                return x
        assert time.monotonic() < deadline, f"{os.path.basename(path)}: no {prefix!r} within {timeout} s: {lines[-10:]}"
        time.sleep(0.005)


class Crew:
    """Workers started together: each waits for the go file after opening the store."""

    def __init__(self, server: Server, tmp, name: str = "crew") -> None:
        self.server, self.dir = server, str(tmp)
        self.go = os.path.join(self.dir, f"{name}.go")
        self.workers: dict[str, tuple[int, str]] = {}

    def add(self, name: str, role: str, env: dict[str, str] | None = None, **spec) -> None:
        log = os.path.join(self.dir, f"{name}.log")
        pid = self.server.spawn(role, log, env, go=self.go, **spec)
        self.workers[name] = (pid, log)

    def start(self) -> None:
        for name, (_pid, log) in self.workers.items():
            wait_line(log, "ready")
        with open(self.go, "w"):
            pass

    def finish(self, timeout: float) -> dict[str, dict]:
        """Wait for every summary and reap every process; {name: summary}."""
        summaries = {}
        try:
            for name, (_pid, log) in self.workers.items():
                summaries[name] = json.loads(wait_line(log, "summary", timeout).split(" ", 1)[1])
        finally:
            self.kill_all()
        return summaries

    def kill_all(self) -> None:
        for _name, (pid, _log) in self.workers.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.server.reap(pid)
        self.workers_done = dict(self.workers)
        self.workers = {}

    def lines(self, name: str) -> list[str]:
        return read_log(os.path.join(self.dir, f"{name}.log"))


def record(section: str, data: dict) -> None:
    """Merge measurements into the results file (read by the lead for issue 10's closing note)."""
    try:
        with open(RESULTS) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {}
    doc[section] = data
    with open(RESULTS, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    print(f"\n[storage truth] {section}: {json.dumps(data, sort_keys=True)}\n[storage truth] results in {RESULTS}")


def verify_clean(store: CheckpointStore) -> None:
    report = store.verify(full=True)
    assert report.ok, [str(p) for p in report.problems][:20]


def pack_bytes(storage) -> int:
    return sum(e.size for e in storage.list("packs") if e.name.endswith(".safetensors") and not e.name.startswith("."))


# ============================================================================================ 1. stress

BACKENDS = ["local-sqlite", "s3-postgres", "s3-per-host"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", BACKENDS)
def test_stress(backend, request, tmp_path, server):
    """3 savers, prune, rm, gc(grace 0), reindex and 2 loaders at once; afterwards storage and index agree,
    every save that returned is listed or was removed on purpose, everything listed restores bit for bit."""
    per_host = backend == "s3-per-host"
    if backend == "local-sqlite":
        location, shared_index = str(tmp_path / "store"), None
    else:
        location = request.getfixturevalue("s3_url")
        shared_index = request.getfixturevalue("pg_url") if backend == "s3-postgres" else None

    def index_of(name: str) -> str | None:
        return f"sqlite:///{tmp_path}/index-{name}.sqlite" if per_host else shared_index

    def env_of(name: str) -> dict[str, str]:
        return {"CKPT_HOST": f"host-{name}"} if per_host else {}

    CheckpointStore(location, index=index_of("creator")).close()
    crew = Crew(server, tmp_path)
    n_savers = 3
    # On (moto) S3 each exclusive operation takes longer: fewer of them, so that saves get a turn too.
    common = {"store": location, "seconds": STRESS_SECONDS, "runs": n_savers,
              "pace": 1.0 if backend == "local-sqlite" else 3.0}
    for i in range(n_savers):
        crew.add(f"saver{i}", "saver", env_of(f"saver{i}"), index=index_of(f"saver{i}"), idx=i, **common)
    for role in ("pruner", "remover", "gc", "reindexer", "loader0", "loader1"):
        crew.add(role, role.rstrip("01"), env_of(role), index=index_of(role), sync=per_host, seed=hash(role) % 1000,
                 **common)
    crew.start()
    summaries = crew.finish(STRESS_SECONDS + STEP_TIMEOUT * 2)

    logs = {name: crew.lines(name) for name in summaries}
    bad = [f"{name}: {line}" for name, lines in logs.items() for line in lines if line.startswith("BAD")]
    saved: dict[str, tuple[int, int]] = {}
    for name, lines in logs.items():
        for line in lines:
            if line.startswith("saved "):
                _, run, epoch, cid = line.split()
                saved[cid] = (tw.run_index(run), int(epoch))
    removed = {line.split()[1] for lines in logs.values() for line in lines if line.startswith("removed ")}
    expected = sorted({line.split()[1] for lines in logs.values() for line in lines if line.startswith("expected")})
    total = {k: sum(s.get(k, 0) for s in summaries.values())
             for k in ("saves", "deletions", "gcs", "gc_packs", "reindexes", "restored", "prunes", "fallbacks")}
    assert not bad, "\n".join(bad[:10])
    assert "StoreBusyError" not in expected, expected

    # The truth: a brand-new index rebuilt from storage alone; and the index the workers used.
    truth_index = f"sqlite:///{tmp_path}/truth.sqlite"
    final = 0
    with CheckpointStore(location, index=truth_index) as truth:
        truth_ids = {i.id for i in truth.list()}
        if not per_host:
            with CheckpointStore(location, index=shared_index) as used:
                used_ids = {i.id for i in used.list()}
            assert used_ids == truth_ids, (f"the shared index lists {len(used_ids - truth_ids)} checkpoint(s) "
                                           f"storage lacks and lacks {len(truth_ids - used_ids)} that storage has")
        lost = set(saved) - truth_ids - removed
        assert not lost, f"{len(lost)} returned save(s) lost: {sorted(saved[c] for c in lost)[:10]}"
        assert not (truth_ids - set(saved)), "a checkpoint no save reported is listed"
        assert not (truth_ids & removed), "a checkpoint reported removed is still there"
        for info in truth.list():
            idx, epoch = saved[info.id]
            assert (info.run, info.epoch) == (tw.run_name(idx), epoch)
            tw.assert_bit_exact(truth.load(info.id), tw.truth_state(idx, epoch), f"{info.run}@{epoch}")
            final += 1
        verify_clean(truth)
        truth.gc(grace_seconds=0)
        verify_clean(truth)
        assert truth.list(), "every run's latest is kept by prune"

    counts = {"backend": backend, "seconds": STRESS_SECONDS, "saves": len(saved), "deletions": len(removed),
              "gcs": total["gcs"], "gc_packs_freed": total["gc_packs"], "reindexes": total["reindexes"],
              "prunes": total["prunes"], "restored_by_loaders": total["restored"], "restored_at_end": final,
              "loader_fallbacks": total["fallbacks"], "expected_errors": len(expected),
              "longest_save_s": max(s.get("max_save_ms", 0) for s in summaries.values()) / 1000,
              "expected_error_types": sorted({e for e in expected})}
    record(f"stress/{backend}", counts)
    assert len(saved) > 0 and total["gcs"] > 0 and total["reindexes"] > 0 and total["restored"] > 0, counts
    assert removed, counts


# ============================================================================================ 2. two hosts

def _a_state(epoch: int, *, x: bool = False) -> dict:
    state = {"w": tw._randn(96 * 1024, 300 + epoch), "epoch": epoch}
    if x:
        state["x"] = tw._randn(512 * 1024, 4242)  # 2 MiB that only checkpoint 0 (then 6) holds
    return state


@pytest.mark.timeout(600)
def test_two_hosts_gc(tmp_path, s3_url, server, monkeypatch):
    """Host B (per-host cache, opened earlier) runs gc(grace 0) and prune while its index does not know
    host A's newest checkpoints: nothing of A's is lost. Then A, whose index still lists a pack B freed,
    saves that tensor again: it must write it anew, not reuse the deleted pack."""
    monkeypatch.setenv("CKPT_CACHE_DIR", str(tmp_path / "cache-a"))  # host A: this process
    a = CheckpointStore(s3_url)
    try:
        ids = {0: a.save("a", 0, _a_state(0, x=True)).id}
        for e in (1, 2):
            ids[e] = a.save("a", e, _a_state(e)).id
        junk = a.save("junk", 0, {"j": tw._randn(64 * 1024, 17)})
        a.delete(junk.id, free=False)  # an orphan pack for B's gc
        log = str(tmp_path / "b.log")
        go = str(tmp_path / "b.go")
        pid = server.spawn("maint_once", log, {"CKPT_HOST": "host-b", "CKPT_CACHE_DIR": str(tmp_path / "cache-b")},
                           store=s3_url, go=go, run="a", keep_last=2)
        wait_line(log, "ready")  # B opened (and synced its cache) before A's next saves
        for e in (3, 4, 5):
            ids[e] = a.save("a", e, _a_state(e)).id
        open(go, "w").close()
        wait_line(log, "summary")
        assert server.reap(pid) == 0
        lines = read_log(log)
        removed = {x.split()[1] for x in lines if x.startswith("removed ")}
        freed = [x for x in lines if x.startswith("gc ")]
        assert freed == ["gc 1"], lines  # the orphan, and nothing A saved since B opened
        # B's cache knew 0..2 only; prune decides from storage: keep_last=2 keeps 4 and 5.
        assert removed == {ids[e] for e in range(4)}, (lines, ids)
        for e in (4, 5):  # A loads every one it saved and nobody removed on purpose
            tw.assert_bit_exact(a.load(ids[e]), _a_state(e), f"a@{e}")
        # A's index still lists checkpoint 0 and the pack holding "x", which B's prune freed.
        info6 = a.save("a", 6, _a_state(6, x=True))
        assert info6.new_bytes >= MiB, "the save reused bytes from a pack another host deleted"
        tw.assert_bit_exact(a.load(info6.id), _a_state(6, x=True), "a@6")
        a.gc(grace_seconds=0)  # gc on the other host too: loses nothing
        verify_clean(a)
    finally:
        a.close()
    with CheckpointStore(s3_url, index=f"sqlite:///{tmp_path}/truth.sqlite") as truth:
        assert {i.epoch for i in truth.list()} == {4, 5, 6}
        for i in truth.list():
            tw.assert_bit_exact(truth.load(i.id), _a_state(i.epoch, x=i.epoch == 6), f"a@{i.epoch}")
        verify_clean(truth)


def test_two_hosts_gc_memory(tmp_path):
    """The same on memory:// (each store object has its own in-memory index, as two hosts would): B's gc
    and prune decide from storage, so A's checkpoints saved after B opened all load."""
    import uuid
    url = f"memory://ckpt-truth-{uuid.uuid4().hex}"
    a = CheckpointStore(url)
    try:
        for e in range(2):
            a.save("a", e, _a_state(e))
        b = CheckpointStore(url)  # host B: knows 0 and 1
        later = [a.save("a", e, _a_state(e)).id for e in range(2, 5)]
        assert b.gc(grace_seconds=0).packs == []
        plan = b.prune(keep_last=2, run="a")
        assert [i.epoch for i in plan.remove] == [0, 1, 2]
        b.close()
        for e, cid in zip(range(3, 5), later[1:]):
            tw.assert_bit_exact(a.load(cid), _a_state(e), f"a@{e}")
        info = a.save("a", 5, _a_state(0))  # bytes of a freed pack, through A's index that listed it
        tw.assert_bit_exact(a.load(info.id), _a_state(0))
        verify_clean(a)
    finally:
        a.close()


# ============================================================================================ 3. shared index

def test_shared_index(tmp_path, monkeypatch):
    """Two stores pointed at one index: the second open is IndexMismatchError with advice, through the API
    and through the CLI (CKPT_INDEX); a store never dedups against another store's packs."""
    from ckpt.cli import cli
    url = f"sqlite:///{tmp_path}/shared.sqlite"
    state = {"w": tw._randn(256 * 1024, 1), "b": torch.arange(10)}
    with CheckpointStore(tmp_path / "a", index=url) as a:
        a.save("r", 0, state)
    with CheckpointStore(tmp_path / "b") as b:  # store b exists, with its own default index
        info_b = b.save("r", 0, state)
        assert info_b.new_bytes >= state["w"].numel() * 4, "store b deduplicated against store a"
        tw.assert_bit_exact(b.load(), state)
    with pytest.raises(IndexMismatchError) as err:
        CheckpointStore(tmp_path / "b", index=url)
    assert "CKPT_INDEX" in str(err.value) and "own index" in str(err.value)
    with pytest.raises(IndexMismatchError):
        CheckpointStore(tmp_path / "b", index=url, readonly=True)

    monkeypatch.setenv("CKPT_INDEX", url)
    runner = CliRunner()
    ok = runner.invoke(cli, ["--store", str(tmp_path / "a"), "ls"])
    assert ok.exit_code == 0, ok.output
    for argv in (["--store", str(tmp_path / "b"), "ls"], ["--store", str(tmp_path / "b"), "gc"]):
        res = runner.invoke(cli, argv)
        assert res.exit_code != 0, res.output
        assert "CKPT_INDEX" in res.output and "another store" in res.output, res.output
    monkeypatch.delenv("CKPT_INDEX")

    # An index from before store ids (no meta.store_id) is recognised as foreign by its contents.
    with sqlite3.connect(f"{tmp_path}/shared.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key = 'store_id'")
    with pytest.raises(IndexMismatchError):
        CheckpointStore(tmp_path / "c", index=url).save("r", 0, state)
    with CheckpointStore(tmp_path / "c") as c:  # what the advice says: its own index
        info_c = c.save("r", 0, state)
        assert info_c.new_bytes >= state["w"].numel() * 4
        tw.assert_bit_exact(c.load(), state)
        verify_clean(c)


# ============================================================================================ 4. mutation

@pytest.mark.slow
@pytest.mark.timeout(600)
def _save_while_flipping(store, run: str, epoch: int, state: dict, flipped: list, delay: float):
    """A blocking save while another thread, from ``delay`` seconds in, fills ``flipped`` with 1, -1, 1...
    until the save returns (its warning about changed tensors is expected and swallowed)."""
    stop = threading.Event()

    def flip() -> None:
        time.sleep(delay)
        v = 1.0
        while not stop.is_set():
            for t in flipped:
                t.fill_(v)
            v = -v

    th = threading.Thread(target=flip)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        th.start()
        try:
            return store.save(run, epoch, state)
        finally:
            stop.set()
            th.join()


def test_mutation_mid_save_of_many_small_tensors(tmp_path):
    """Small tensors are copied, written and hashed in batches: a thread flipping 2,000 of them (4 KiB
    each) during blocking saves never makes a checkpoint whose bytes disagree with its hashes, and a later
    all-zeros save in another run restores exactly zeros."""
    names = [f"layer{i}.weight" for i in range(2000)]
    with CheckpointStore(tmp_path / "store", compression="none") as store:
        for k in range(6):
            state = {n: torch.zeros(1024) for n in names}
            info = _save_while_flipping(store, "mut", k, state, list(state.values()), 0.002 * k)
            got = store.load(info.id)  # checksums verified on read
            assert all(got[n].abs().max() <= 1 for n in names)
        verify_clean(store)
        zeros = {n: torch.zeros(1024) for n in names}
        info = store.save("clean", 0, zeros)
        tw.assert_bit_exact(store.load(info.id), zeros)
        verify_clean(store)


def test_mutation_mid_save(tmp_path):
    """A thread writes into a 64 MiB tensor while a blocking save of it runs, at 20 different moments:
    every checkpoint is internally consistent (loads, verify --full clean), and a later all-zeros save in
    another run restores exactly zeros (no dedup entry maps hash(zeros) to other bytes)."""
    n = 16 * MiB  # float32: 64 MiB
    delays = [i * 0.004 for i in range(20)]
    mutated = 0
    with CheckpointStore(tmp_path / "store", compression="none") as store:
        for k, delay in enumerate(delays):
            t = torch.zeros(n)
            twin = torch.zeros(n)  # same bytes at the start: one dedup group with the mutated tensor
            info = _save_while_flipping(store, "mut", k, {"t": t, "twin": twin, "small": torch.zeros(100)}, [t], delay)
            got = store.load(info.id)  # checksums are verified on every read
            assert torch.equal(got["twin"], torch.zeros(n)) and torch.equal(got["small"], torch.zeros(100))
            mutated += int(not torch.equal(got["t"], torch.zeros(n)))
            if k % 5 == 4:  # keep the disk use bounded: the checks below cover what is left
                verify_clean(store)
                for old in store.list(run="mut")[:-1]:
                    store.delete(old.id)
        verify_clean(store)
        zeros = {"t": torch.zeros(n), "twin": torch.zeros(n), "small": torch.zeros(100)}
        info = store.save("clean", 0, zeros)
        tw.assert_bit_exact(store.load(info.id), zeros)
        tw.assert_bit_exact(store.load("clean@0"), zeros)
        verify_clean(store)
    print(f"\n[storage truth] mutation mid-save: {mutated} of {len(delays)} checkpoints caught the mutation")


# ============================================================================================ 5. first writers

@pytest.mark.timeout(600)
def test_concurrent_first_writers(tmp_path, server):
    """8 processes save the same new 8 MiB tensor at the same moment: it is stored about once."""
    mib = 8
    # One writer alone, for the time it takes.
    solo = Crew(server, tmp_path, "solo")
    solo.add("solo", "first_writer", store=str(tmp_path / "solo-store"), idx=0, mib=mib)
    solo.start()
    solo.finish(STEP_TIMEOUT)
    single = float(solo.lines("solo")[-2].split()[4])

    store_dir = str(tmp_path / "store")
    CheckpointStore(store_dir).close()
    crew = Crew(server, tmp_path, "eight")
    for i in range(8):
        crew.add(f"w{i}", "first_writer", store=store_dir, idx=i, mib=mib)
    crew.start()
    crew.finish(STEP_TIMEOUT)
    times, new_bytes = [], []
    for i in range(8):
        line = next(x for x in crew.lines(f"w{i}") if x.startswith("saved "))
        times.append(float(line.split()[4]))
        new_bytes.append(int(line.split()[5]))
    with CheckpointStore(store_dir) as store:
        infos = store.list()
        assert len(infos) == 8
        shared = tw._randn(mib * MiB // 4, 777_777)
        for info in infos:
            idx = int(info.run.split("-")[1])
            tw.assert_bit_exact(store.load(info.id), {"shared": shared, "own": tw._randn(1024, 5_000 + idx),
                                                      "idx": idx})
        total = pack_bytes(store.storage)
        verify_clean(store)
    one_copy = mib * MiB + 8 * 4096
    data = {"writers": 8, "tensor_mib": mib, "pack_bytes": total, "copies": round(total / (mib * MiB), 2),
            "single_writer_s": round(single, 3), "eight_writer_wall_s": round(max(times), 3),
            "new_bytes_per_writer": new_bytes}
    record("concurrent_first_writers", data)
    assert total <= 1.5 * one_copy, data


# ============================================================================================ 6. SIGKILL + locks

def _lock_of(store_dir: str, kind: str, pid: int) -> bool:
    try:
        names = os.listdir(os.path.join(store_dir, "locks"))
    except FileNotFoundError:
        return False
    return any(n.startswith(f"{kind}-") and f"-{pid}-" in n for n in names)


def _kill_when_locked(server: Server, store_dir: str, kind: str, pid: int, log: str) -> bool:
    """SIGKILL ``pid`` as soon as it holds a ``kind`` lock (True), or False if it finished first."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        if _lock_of(store_dir, kind, pid):
            os.kill(pid, signal.SIGKILL)
            server.reap(pid)  # a zombie's pid still exists: reap it so the lock is seen as stale
            return True
        if any(x.startswith(("summary", "error", "saved ")) for x in read_log(log)):
            server.reap(pid)
            return False
        time.sleep(0.0005)
    raise AssertionError(f"no {kind} lock of {pid} within {STEP_TIMEOUT} s: {read_log(log)}")


@pytest.mark.timeout(600)
def test_sigkill_holding_locks(tmp_path, server, monkeypatch):
    """A saver killed while holding the shared lock, and a gc killed while holding the exclusive lock: the
    next acquire of the other kind succeeds at once (same host, dead pid: stale), nothing is lost."""
    monkeypatch.setenv("CKPT_LOCK_TIMEOUT", "60")  # a stale lock that is not recognised fails the test
    store_dir = str(tmp_path / "store")
    keep = {"w": tw._randn(256 * 1024, 5), "epoch": 0}
    with CheckpointStore(store_dir) as store:
        kept = store.save("keep", 0, keep).id
    waits: dict[str, list[float]] = {"after_killed_saver_gc_s": [], "after_killed_gc_save_s": []}
    kills = {"saver": 0, "gc": 0}
    for round_ in range(3):
        log = str(tmp_path / f"big{round_}.log")
        pid = server.spawn("big_saver", log, store=store_dir, run="big", epoch=round_, mib=96, seed=round_)
        kills["saver"] += _kill_when_locked(server, store_dir, "s", pid, log)
        with CheckpointStore(store_dir) as store:
            t0 = time.perf_counter()
            store.gc(grace_seconds=0)  # the exclusive lock, past the dead saver's shared one
            waits["after_killed_saver_gc_s"].append(round(time.perf_counter() - t0, 3))
            for info in store.list():  # a save killed after its manifest is rolled forward: whole
                if info.run == "big":
                    tw.assert_bit_exact(store.load(info.id), {"w": tw._randn(96 * MiB // 4, info.epoch),
                                                              "epoch": info.epoch})
            tw.assert_bit_exact(store.load(kept), keep)
            verify_clean(store)

        log = str(tmp_path / f"gc{round_}.log")
        with CheckpointStore(store_dir) as store:  # garbage for gc to chew on: orphan packs
            for j in range(5):
                store.save("junk", 10 * round_ + j, {"j": tw._randn(64 * 1024, 900 + 10 * round_ + j)})
            for info in store.list(run="junk"):
                store.delete(info.id, free=False)
        pid = server.spawn("gc_loop", log, store=store_dir)
        wait_line(log, "ready")
        kills["gc"] += _kill_when_locked(server, store_dir, "x", pid, log)
        with CheckpointStore(store_dir) as store:
            t0 = time.perf_counter()
            info = store.save("after", round_, {"a": torch.full((1000,), float(round_))})  # the shared lock
            waits["after_killed_gc_save_s"].append(round(time.perf_counter() - t0, 3))
            tw.assert_bit_exact(store.load(info.id), {"a": torch.full((1000,), float(round_))})
            tw.assert_bit_exact(store.load(kept), keep)
            verify_clean(store)
    assert kills["saver"] >= 1 and kills["gc"] >= 1, kills
    with CheckpointStore(store_dir) as store:
        assert {"keep", "after"} <= {i.run for i in store.list()} <= {"keep", "after", "big"}
        store.gc(grace_seconds=0)
        verify_clean(store)
        assert not [n for n in os.listdir(os.path.join(store_dir, "locks")) if n.endswith(".lock")]
    record("sigkill_holding_locks", {"kills": kills, **waits})


# ============================================================================================ 7. idempotent

@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["local", "s3-per-host"])
def test_concurrent_prunes_are_idempotent(backend, request, tmp_path, server):
    """Two processes prune the same run at once, then two remove the same checkpoint at once: no error,
    and the result is as if one had run."""
    location = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")

    def host(name: str) -> tuple[dict, str | None]:
        if backend == "local":
            return {}, None
        return {"CKPT_HOST": f"host-{name}"}, f"sqlite:///{tmp_path}/index-{name}.sqlite"

    with CheckpointStore(location, index=f"sqlite:///{tmp_path}/index-setup.sqlite"
                         if backend != "local" else None) as store:
        ids = [store.save("p", e, {"w": tw._randn(32 * 1024, 70 + e), "e": e}).id for e in range(8)]
        info6 = store.get(ids[6])
    crew = Crew(server, tmp_path, "prune")
    for name in ("p1", "p2"):
        env, index = host(name)
        crew.add(name, "prune_once", env, store=location, index=index, run="p", keep_last=2)
    crew.start()
    crew.finish(STEP_TIMEOUT)
    removed = [x.split()[1] for name in ("p1", "p2") for x in crew.lines(name) if x.startswith("removed ")]
    assert set(removed) == set(ids[:6]), removed

    crew = Crew(server, tmp_path, "rm")
    for name in ("r1", "r2"):
        env, index = host(name)
        crew.add(name, "rm_once", env, store=location, index=index, id=ids[6])
    crew.start()
    crew.finish(STEP_TIMEOUT)
    for name in ("r1", "r2"):
        assert f"removed {ids[6]}" in crew.lines(name)
    with CheckpointStore(location, index=f"sqlite:///{tmp_path}/index-late.sqlite"
                         if backend != "local" else None) as late:
        assert late.delete(info6).id == ids[6]  # a third time, long after: still not an error
        with pytest.raises(CheckpointNotFoundError):
            late.delete(ids[6])  # an id string that matches nothing is what a typo looks like

    with CheckpointStore(location, index=f"sqlite:///{tmp_path}/truth.sqlite") as truth:
        assert [i.id for i in truth.list()] == [ids[7]]
        tw.assert_bit_exact(truth.load(), {"w": tw._randn(32 * 1024, 77), "e": 7})
        verify_clean(truth)
        truth.gc(grace_seconds=0)
        assert pack_bytes(truth.storage) < 2 * 32 * 1024 * 4 + 4096


# ============================================================================================ 8. vanished blob

def test_blob_vanishes_between_listing_and_reading(s3_url, s3_server, tmp_path):
    """A pack deleted behind ckpt's back after the read was planned (between HEAD and GET): a typed error
    for that checkpoint, and "latest" falls back to the previous one with a warning."""
    client = s3_server.client()
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    with CheckpointStore(s3_url, index=f"sqlite:///{tmp_path}/index.sqlite") as store:
        s0 = {"w": tw._randn(64 * 1024, 1)}
        s1 = {"w": tw._randn(64 * 1024, 2)}
        store.save("r", 0, s0)
        second = store.save("r", 1, s1)
        doomed = {s.pack for s in store.manifest(second.id).slots}
        real_reader = store.storage.reader

        def vanishing_reader(key: str):
            reader = real_reader(key)  # the object is there (its size is known)...
            if any(p in key for p in doomed):  # ...and gone before the first byte is read
                client.delete_object(Bucket=bucket, Key=f"{prefix}/{key}")
            return reader

        store.storage.reader = vanishing_reader
        with pytest.raises((MissingBlobError, CheckpointNotFoundError)) as err:
            store.load(second.id)
        assert not isinstance(err.value, FileNotFoundError) or isinstance(err.value, MissingBlobError)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got, info = store.load("latest", with_info=True)
        assert info.epoch == 0
        tw.assert_bit_exact(got, s0)
        assert any(second.short_id in str(w.message) for w in caught), [str(w.message) for w in caught]
        with pytest.raises(CorruptCheckpointError):
            store.load(second.id)  # still damaged (not silently something else)


# ============================================================================================ 9. tied weights

class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(512, 64)
        self.head = torch.nn.Linear(64, 512, bias=False)
        self.head.weight = self.emb.weight


def test_tied_load_into(tmp_path):
    """load_into a model whose head.weight is emb.weight, from a checkpoint holding different values under
    the two keys, 100 times: always what load_state_dict gives (the later key wins), no warning."""
    state = {"emb.weight": tw._randn(512 * 64, 11).reshape(512, 64),
             "head.weight": tw._randn(512 * 64, 12).reshape(512, 64)}
    reference = Tied()
    reference.load_state_dict(state)
    want = reference.emb.weight.detach().clone()
    assert torch.equal(want, state["head.weight"])
    with CheckpointStore(tmp_path / "store") as store:
        store.save("older", 0, {"emb.weight": torch.zeros(512, 64), "head.weight": torch.ones(512, 64)})
        store.save("tied", 0, state)
        for _ in range(100):
            model = Tied()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                report = store.load_into(model, "tied@0")
            assert report.checkpoint.run == "tied"
            assert model.head.weight is model.emb.weight
            assert torch.equal(model.emb.weight.detach(), want)
            assert report.missing_keys == [] and report.unexpected_keys == []


# ============================================================================================ 10. lock cost

def test_locking_cost(tmp_path, monkeypatch):
    """Not a timing assert: the lock overhead per save (10 tensors, ~1 MB, local disk), in ms."""
    import statistics

    import ckpt.locks as locks_mod

    def state(i: int) -> dict:
        return {f"t{k}": tw._randn(25_000, 1000 * i + k) for k in range(10)}  # 10 x 100 KB

    class NoLock:
        """What a save needs of its shared lock, without the lock objects on storage."""

        def __init__(self, generation: int) -> None:
            self.generation = generation

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def check(self) -> None:
            pass

        def release(self) -> None:
            pass

    real_shared = locks_mod.Locks.shared
    mode = {"locks": True}

    def shared(self, what="save", timeout=None):  # type: ignore[no-untyped-def]
        if mode["locks"]:
            return real_shared(self, what, timeout)
        return NoLock(store.catalog.generation())  # the generation as the index last saw it: no listing

    monkeypatch.setattr(locks_mod.Locks, "shared", shared)
    times: dict[bool, list[float]] = {True: [], False: []}
    n = int(os.environ.get("CKPT_LOCK_COST_SAVES", "40"))
    with CheckpointStore(tmp_path / "store") as store:
        for i in range(n):  # interleaved, so that machine load drifts hit both alike
            for locked in ((True, False) if i % 2 else (False, True)):
                mode["locks"] = locked
                s = state(i)
                t0 = time.perf_counter()
                store.save("locked" if locked else "unlocked", i, s)
                if i >= 3:
                    times[locked].append(time.perf_counter() - t0)
        mode["locks"] = True
        verify_clean(store)
        t0 = time.perf_counter()
        for _ in range(200):  # the lock alone: create, list, delete
            with store.locks.shared():
                pass
        lock_alone = (time.perf_counter() - t0) / 200 * 1000
    with_locks = statistics.median(times[True]) * 1000
    without = statistics.median(times[False]) * 1000
    data = {"saves_each": len(times[True]), "save_ms_with_locks": round(with_locks, 2),
            "save_ms_without_locks": round(without, 2), "lock_overhead_ms": round(with_locks - without, 2),
            "shared_lock_acquire_release_ms": round(lock_alone, 3),
            "state": "10 tensors, 1 MB, local disk, default index"}
    record("locking_cost", data)


# ============================================================================================ races
# Interleavings the stress run hits only by luck, forced here: one store object pauses inside a storage
# call while another (another "host": its own index) acts. Each was a bug before the fix it names.

def _hosts(tmp_path, location: str, *names: str) -> list[CheckpointStore]:
    return [CheckpointStore(location, index=f"sqlite:///{tmp_path}/index-{n}.sqlite") for n in names]


@pytest.mark.timeout(300)
def test_sync_during_a_deletion_does_not_mark_the_index_current(tmp_path):
    """Host S syncs its index (``store.sync()``, or opening the store) while host X is half way through
    deleting a checkpoint: X's manifest is gone but its pack not yet. S must not record X's deletion
    generation as seen, or its next save dedups against the pack X is about to delete."""
    location = str(tmp_path / "store")
    u = {"u": tw._randn(256 * 1024, 99)}
    x, s = _hosts(tmp_path, location, "x", "s")
    try:
        doomed = x.save("x", 0, u)
        x.save("x", 1, {"v": tw._randn(1024, 1)})
        assert s.sync() >= 0 and [i.id for i in s.list()][0] == doomed.id
        paused, resume = threading.Event(), threading.Event()
        real_delete = x.storage.delete

        def slow_delete(key: str) -> bool:
            if key.startswith("packs/"):
                paused.set()
                assert resume.wait(60)
            return real_delete(key)

        x.storage.delete = slow_delete
        th = threading.Thread(target=x.delete, args=(doomed.id,))
        th.start()
        assert paused.wait(60)
        s.sync()  # the manifest is gone, the pack still there: the generation is X's new one
        with CheckpointStore(location, index=f"sqlite:///{tmp_path}/index-late.sqlite"):
            pass  # opening a store (a per-host cache syncs) at that moment: the same
        resume.set()
        th.join(60)
        info = s.save("s", 0, u)
        tw.assert_bit_exact(s.load(info.id), u)
        verify_clean(s)
    finally:
        x.close()
        s.close()


@pytest.mark.timeout(300)
def test_sync_never_forgets_a_checkpoint_committed_meanwhile(tmp_path):
    """A sync of a shared index lists the manifests, and another process commits a checkpoint before the
    sync reads the index: that checkpoint must stay listed (it was forgotten as "deleted")."""
    location = str(tmp_path / "store")
    index = f"sqlite:///{tmp_path}/shared.sqlite"
    p, q = CheckpointStore(location, index=index), CheckpointStore(location, index=index)
    try:
        p.save("r", 0, {"w": torch.zeros(10)})
        real_list = p.storage.list
        late: list = []

        def list_then_commit(directory: str):
            out = real_list(directory)
            if directory == "manifests" and not late:
                late.append(q.save("r", 1, {"w": torch.ones(10)}))  # commits after the listing
            return out

        p.storage.list = list_then_commit
        p.sync()
        p.storage.list = real_list
        assert late[0].id in {i.id for i in p.list()}, "a committed checkpoint was dropped from the index"
        assert p.latest(run="r").epoch == 1
    finally:
        p.close()
        q.close()


@pytest.mark.timeout(300)
def test_explicit_parent_deleted_by_another_host_is_not_reused(tmp_path):
    """Fine-tuning from a checkpoint (``parent=``) that another host prunes before the save: the save must
    not reuse the parent's tensors from a pack that is gone."""
    location = str(tmp_path / "store")
    a, b = _hosts(tmp_path, location, "a", "b")
    try:
        frozen = {"frozen": tw._randn(256 * 1024, 5), "head": tw._randn(1024, 6)}
        base = a.save("pretrain", 0, frozen)
        a.load(base.id)  # a fine-tuning script loads it first
        b.sync()
        b.delete(base.id)  # another host removes it (its pack is freed)
        tuned = dict(frozen, head=tw._randn(1024, 7))
        info = a.save("finetune", 0, tuned, parent=base)
        tw.assert_bit_exact(a.load(info.id), tuned)
        verify_clean(a)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(300)
def test_prune_on_a_stale_cache_keeps_the_real_latest(tmp_path, s3_url):
    """Host B's cache still lists the checkpoint host A removed, and not those A saved since: B's prune
    decides from what storage holds. keep_last=1 keeps the run's real latest (not the removed one, which
    would leave the run with nothing), and keep_last=2 counts checkpoints B's cache has not seen."""
    a, b = _hosts(tmp_path, s3_url, "a", "b")
    try:
        ids = [a.save("r", e, {"w": tw._randn(8 * 1024, e)}).id for e in range(4)]
        b.sync()  # B knows 0..3
        a.delete(ids[3])  # deliberately removed on host A
        plan = b.prune(keep_last=1, run="r")
        assert {i.id for i in plan.remove} == set(ids[:2]), [i.epoch for i in plan.remove]
        for e in (4, 5):
            a.save("r", e, {"w": tw._randn(8 * 1024, e)})  # B does not know these
        plan = b.prune(keep_last=2, run="r")
        assert [i.epoch for i in plan.remove] == [2]
        for e in range(3):
            a.save("fresh", e, {"w": tw._randn(8 * 1024, e)})  # a run B has never seen
        plan = b.prune(keep_last=1, run="fresh")
        assert [i.epoch for i in plan.remove] == [0, 1]
        with CheckpointStore(s3_url, index=f"sqlite:///{tmp_path}/truth.sqlite") as truth:
            assert [i.epoch for i in truth.list(run="r")] == [4, 5]
            assert [i.epoch for i in truth.list(run="fresh")] == [2]
            for i in truth.list():
                tw.assert_bit_exact(truth.load(i.id), {"w": tw._randn(8 * 1024, i.epoch)})
            verify_clean(truth)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(300)
def test_a_checkpoint_deleted_the_moment_after_it_was_loaded(tmp_path, monkeypatch):
    """Another process prunes the checkpoint just read, before ``load(with_info=True)`` or ``load_into``
    returns: the caller still gets what was read and the info of what it was (the stress run met this as
    an untyped IndexError on PostgreSQL, whose reads may see a row vanish between two statements)."""
    import ckpt.reader as reader
    location, index = str(tmp_path / "store"), f"sqlite:///{tmp_path}/shared.sqlite"
    loader, pruner = CheckpointStore(location, index=index), CheckpointStore(location, index=index)
    try:
        states = [{"w": tw._randn(4096, e)} for e in range(3)]
        infos = [loader.save("r", e, states[e]) for e in range(3)]
        for name in ("load_state", "load_into"):
            real = getattr(reader, name)

            def read_then_prune(*args, _real=real, **kwargs):
                out = _real(*args, **kwargs)
                pruner.delete(loader.latest().id)  # gone the moment after it was read
                return out

            monkeypatch.setattr(reader, name, read_then_prune)
        state, info = loader.load("latest", with_info=True)
        assert info.id == infos[2].id
        tw.assert_bit_exact(state, states[2])
        target = {"w": torch.zeros(4096)}
        report = loader.load_into(target, "latest", key=None)
        assert report.checkpoint.id == infos[1].id
        tw.assert_bit_exact(target, states[1])
        assert [i.epoch for i in loader.list()] == [0]
    finally:
        loader.close()
        pruner.close()
