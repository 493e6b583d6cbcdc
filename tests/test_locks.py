"""Store locks through the storage alone: other processes (real ones, SIGKILLed too), "other hosts"
(CKPT_HOST in the other process), threads of this process; on local disk, S3 (moto) and memory://."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ckpt.errors import LockLostError, StoreBusyError
from ckpt.locks import Locks, parse_lock_name, this_host
from ckpt.storage import open_storage

HELPER = os.path.join(os.path.dirname(__file__), "helpers", "storage_proc.py")
#: stale_after for the tests that wait for staleness: S3 times have a 1 s resolution.
STALE = {"local": 1.0, "memory": 1.0, "s3": 2.0}


class Holder:
    """A lock held by another process (tests/helpers/storage_proc.py)."""

    def __init__(self, url: str, kind: str, *, stale_after: float = 300, host: str | None = None) -> None:
        env = dict(os.environ)
        if host:
            env["CKPT_HOST"] = host
        self.proc = subprocess.Popen([sys.executable, HELPER, "lock", url, kind, str(stale_after), "30"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.pid = self.proc.pid
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.line(60)
        assert line.startswith("ACQUIRED"), line + self.proc.stderr.read()
        _, generation, self.name = line.split()
        self.generation = int(generation)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("EOF")

    def line(self, timeout: float = 30) -> str:
        return self._lines.get(timeout=timeout)

    def send(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.line()

    def release(self) -> None:
        assert self.send("release") == "RELEASED"
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def holders():
    made: list[Holder] = []

    def make(*args, **kw) -> Holder:
        made.append(Holder(*args, **kw))
        return made[-1]
    yield make
    for h in made:
        h.kill()


def _url(request, tmp_path, backend: str) -> str:
    if backend == "local":
        return str(tmp_path / "store")
    if backend == "memory":
        return f"memory://ckpt-locks-{uuid.uuid4().hex}"
    return request.getfixturevalue("s3_url")


@pytest.fixture(params=["local", "memory", "s3"])
def any_url(request, tmp_path):
    """Every backend (in-process tests: memory:// is one process's)."""
    return _url(request, tmp_path, request.param)


@pytest.fixture(params=["local", "s3"])
def shared_url(request, tmp_path):
    """Backends that other processes see."""
    return _url(request, tmp_path, request.param)


def backend(url: str) -> str:
    return "s3" if url.startswith("s3://") else "memory" if url.startswith("memory://") else "local"


def in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, result dict with "value" or "error")."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# --------------------------------------------------------------------------------- in-process


def test_shared_locks_coexist(any_url):
    locks = Locks(open_storage(any_url), stale_after=30, timeout=0)
    a = locks.shared("save")
    b = locks.shared("save")
    found = locks.holders()
    assert {i.name for i in found} == {a.name, b.name}
    assert all(i.kind == "shared" and i.pid == os.getpid() and i.host == this_host() and not i.stale
               for i in found)
    a.release()
    a.release()  # idempotent
    with b:
        pass
    assert locks.holders() == []


def test_exclusive_is_exclusive_within_one_process(any_url):
    """Two lock objects of one process are independent: no reentrancy, and no waiting for oneself."""
    locks = Locks(open_storage(any_url), stale_after=30)
    x = locks.exclusive(timeout=0)  # its own lock does not block it
    with pytest.raises(StoreBusyError):
        locks.exclusive(timeout=0.2)
    with pytest.raises(StoreBusyError):
        locks.shared(timeout=0)
    x.release()
    # an exclusive waits for a shared lock that another thread of this process holds
    got = threading.Event()
    t, _ = in_thread(lambda: (locks.shared().__enter__(), got.set(), time.sleep(0.3))[0].release())
    got.wait(10)
    start = time.monotonic()
    with locks.exclusive(timeout=10) as x:
        assert time.monotonic() - start > 0.15
        assert [i.name for i in locks.holders()] == [x.name]
    t.join(10)


def test_lost_lock_is_reported_and_never_recreated(any_url):
    storage = open_storage(any_url)
    locks = Locks(storage, stale_after=STALE[backend(any_url)])
    lock = locks.shared()
    lock.check()
    storage.delete(lock.key)  # what another process does when it takes the lock for stale
    with pytest.raises(LockLostError, match="removed by someone else"):
        lock.check()
    quiet = locks.shared()
    storage.delete(quiet.key)
    wait_for(lambda: quiet.lost, timeout=4 * locks.refresh_interval + 2)  # the refresher noticed
    with pytest.raises(LockLostError):
        quiet.check(remote=False)
    assert not storage.exists(quiet.key)  # refreshing did not bring it back
    lock.release()
    quiet.release()


def test_refresh_keeps_a_long_held_lock_alive():
    """(On local disk and S3 the other-host test below shows the same through another process.)"""
    url = f"memory://ckpt-locks-{uuid.uuid4().hex}"
    storage = open_storage(url)
    stale = STALE["memory"]
    with Locks(storage, stale_after=stale).shared() as lock:
        time.sleep(stale * 1.5)
        elsewhere = Locks(storage, stale_after=stale)
        elsewhere.host = "another-host"  # so only the age can make it stale
        (info,) = elsewhere.holders()
        assert info.name == lock.name and not info.stale and info.age < stale
        with pytest.raises(StoreBusyError):
            elsewhere.exclusive(timeout=0)
        lock.check()


def test_bump_moves_the_generation(any_url):
    storage = open_storage(any_url)
    locks = Locks(storage, stale_after=30, timeout=5)
    assert locks.generation() == 0
    with locks.shared() as s:
        assert s.generation == 0
        with pytest.raises(ValueError):
            locks.bump(s)
    with locks.exclusive() as x:
        assert x.generation == 0
        assert [locks.bump(x) for _ in range(5)] == [1, 2, 3, 4, 5]
        assert x.generation == 5 and locks.generation() == 5
    gens = sorted(e.name for e in storage.list("locks") if e.name.startswith("gen-"))
    assert gens[-1] == "gen-000000000005" and len(gens) <= 3  # old generations are removed
    with locks.shared() as s:
        assert s.generation == 5


def test_mutual_exclusion_under_contention(any_url):
    """Threads with independent locks, shared and exclusive mixed: an exclusive holder is always alone."""
    locks = Locks(open_storage(any_url), stale_after=30, timeout=60)
    state = {"s": 0, "x": 0, "max_s": 0, "x_rounds": 0}
    guard = threading.Lock()
    errors: list[str] = []
    rounds = 3 if backend(any_url) == "s3" else 6

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            exclusive = rng.random() < 0.35
            with (locks.exclusive() if exclusive else locks.shared()):
                with guard:
                    if exclusive:
                        if state["s"] or state["x"]:
                            errors.append(f"exclusive granted beside {state}")
                        state["x"] += 1
                        state["x_rounds"] += 1
                    else:
                        if state["x"]:
                            errors.append(f"shared granted beside an exclusive {state}")
                        state["s"] += 1
                        state["max_s"] = max(state["max_s"], state["s"])
                time.sleep(rng.uniform(0.005, 0.03))
                with guard:
                    state["x" if exclusive else "s"] -= 1
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert state["x_rounds"] > 0 and state["max_s"] >= 1
    assert locks.holders() == []


def test_lock_names_and_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_HOST", "my host_name/with:odd*chars-and-a-suffix-long-enough-to-cut")
    host = this_host()
    assert re.fullmatch(r"[A-Za-z0-9.-]{1,40}", host) and host.startswith("my-host-name-with-odd-chars")
    storage = open_storage(tmp_path)
    storage.put("locks/README", b"not a lock")  # anything else in locks/ is ignored
    storage.put("locks/.x-1.lock.tmp-1-ab", b"")
    locks = Locks(storage)
    with locks.exclusive(timeout=0) as lock:
        kind, _, _, pid, lock_host = parse_lock_name(lock.name)
        assert (kind, pid, lock_host) == ("exclusive", os.getpid(), host)
        assert storage.size(lock.key) == 0  # empty: it can be made on a full disk
        assert [i.name for i in locks.holders()] == [lock.name]
    assert parse_lock_name("x-1-ab-1-h.lock") is None and parse_lock_name("gen-000000000001") is None


def test_one_refresher_thread_for_all_locks(tmp_path):
    locks = [Locks(open_storage(tmp_path / str(i)), stale_after=30) for i in range(3)]
    held = [lk.shared() for lk in locks] + [locks[0].shared()]
    assert sum(t.name == "ckpt-lock-refresher" for t in threading.enumerate()) == 1
    for h in held:
        h.release()


# ---------------------------------------------------------------------------- other processes


def test_exclusive_waits_for_a_shared_lock_of_another_process(shared_url, holders):
    storage = open_storage(shared_url)
    holder = holders(shared_url, "shared")
    locks = Locks(storage, stale_after=30)
    with pytest.raises(StoreBusyError) as busy:
        locks.exclusive("gc", timeout=0.3)
    msg = str(busy.value)
    assert f"pid {holder.pid}" in msg and this_host() in msg and "shared lock" in msg
    assert "CKPT_LOCK_TIMEOUT" in msg and [i.pid for i in busy.value.holders] == [holder.pid]
    assert [i.name for i in locks.holders()] == [holder.name]  # ours was removed on timeout
    t, out = in_thread(lambda: locks.exclusive("gc", timeout=30))
    wait_for(lambda: any(i.kind == "exclusive" for i in locks.holders()))
    with pytest.raises(StoreBusyError):  # a waiting exclusive already keeps new savers out
        Locks(storage).shared(timeout=0)
    assert holder.send("check") == "OK"  # the holder keeps its lock meanwhile
    assert t.is_alive()
    holder.release()
    t.join(30)
    lock = out["value"]
    assert lock.kind == "exclusive" and [i.name for i in locks.holders()] == [lock.name]
    lock.release()


def test_shared_waits_while_another_process_holds_the_exclusive_lock(shared_url, holders):
    storage = open_storage(shared_url)
    holder = holders(shared_url, "exclusive")
    locks = Locks(storage, stale_after=30)
    with pytest.raises(StoreBusyError, match=f"exclusive lock of pid {holder.pid}"):
        locks.shared("save", timeout=0.3)
    t, out = in_thread(lambda: locks.shared("save", timeout=30))
    time.sleep(0.3)
    assert t.is_alive()
    holder.release()
    t.join(30)
    with out["value"] as lock:
        assert lock.kind == "shared"


@pytest.mark.parametrize("kind", ["shared", "exclusive"])
def test_a_killed_holder_on_this_host_is_stale_at_once(shared_url, holders, kind, caplog):
    holder = holders(shared_url, kind, stale_after=300)
    holder.kill()
    locks = Locks(open_storage(shared_url), stale_after=300)
    start = time.monotonic()
    with locks.exclusive(timeout=10) as lock:
        assert time.monotonic() - start < 5  # not after 300 s: its pid is gone
        assert [i.name for i in locks.holders()] == [lock.name]
    assert f"pid {holder.pid}" in caplog.text and "stale" in caplog.text


def test_another_hosts_lock_lives_while_refreshed_then_goes_stale(shared_url, holders, caplog):
    """A lock of "another host" (its pid means nothing here) lives while its process refreshes it,
    and a waiting exclusive keeps its own lock fresh meanwhile; once the process stops, its lock
    goes stale after ``stale_after`` and the waiter gets the store."""
    storage = open_storage(shared_url)
    stale = STALE[backend(shared_url)]
    holder = holders(shared_url, "shared", stale_after=stale, host="other-host.example")
    locks = Locks(storage, stale_after=stale)
    t, out = in_thread(lambda: locks.exclusive("gc", timeout=30))
    time.sleep(stale * 1.5)
    assert t.is_alive()
    found = {i.kind: i for i in Locks(storage, stale_after=stale).holders()}
    assert found["shared"].host == "other-host.example" and not found["shared"].stale
    assert found["exclusive"].pid == os.getpid() and not found["exclusive"].stale
    holder.kill()
    killed = time.monotonic()
    t.join(30)
    waited = time.monotonic() - killed
    lock = out["value"]
    assert waited > stale * 0.3  # not at once: only its age can tell
    assert "other-host.example" in caplog.text
    lock.release()
