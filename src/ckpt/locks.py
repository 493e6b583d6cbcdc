"""Store-level shared/exclusive locks and the deletion generation, kept in the store itself.

restic's model, so that locks work across processes and hosts through the storage alone (local
disk, NFS, S3): a lock is an empty object ``locks/{s|x}-{time_ns}-{token}-{pid}-{host}.lock``,
created create-only (empty, so it can be made on a full disk), refreshed (its mtime moved) every
``stale_after / 5`` seconds by one daemon thread per process, and stale when its host is this host
and its pid is gone, or when it has not been refreshed for ``stale_after`` seconds. Whoever finds a
stale lock removes it.

- shared: create our s-lock, list; a live x-lock -> remove ours, wait until there is none, retry.
- exclusive: create our x-lock and keep it while waiting (new shared locks back off at once); an
  older live x-lock (by time_ns, token) -> remove ours and retry later; a younger one is either
  backing off or already holds the store, so wait for it to go; then wait for the live s-locks.

Either way one of two racing lockers sees the other (each creates before it lists), so a shared
and an exclusive, or two exclusives, never both proceed.

``locks/gen-{n}`` is the deletion generation (current = highest n): an exclusive holder that
deletes anything first :meth:`Locks.bump`\\ s it, and a saver reads it from the same listing that
granted its lock, so an index that recorded another generation knows it may name deleted blobs.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from ckpt.errors import LockLostError, MissingBlobError, StorageError, StoreBusyError
from ckpt.storage.base import Entry, Storage, pid_alive

log = logging.getLogger(__name__)

LOCK_DIR = "locks"
SHARED, EXCLUSIVE = "shared", "exclusive"
_KIND_CODE = {SHARED: "s", EXCLUSIVE: "x"}
_CODE_KIND = {"s": SHARED, "x": EXCLUSIVE}
_LOCK_NAME = re.compile(r"^([sx])-(\d{20})-([0-9a-f]{1,32})-(\d{1,10})-([A-Za-z0-9.-]{1,40})\.lock$")
_GEN_NAME = re.compile(r"^gen-(\d{1,30})$")
#: Longest pause between two looks at the lock directory while waiting.
MAX_POLL = 1.0


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def this_host() -> str:
    """This host's name as it appears in lock names: CKPT_HOST if set, else the hostname;
    only ``[A-Za-z0-9.-]``, at most 40 characters."""
    raw = os.environ.get("CKPT_HOST") or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9.-]", "-", raw)[:40] or "unknown"


def gen_key(n: int) -> str:
    return f"{LOCK_DIR}/gen-{n:012d}"


@dataclass(frozen=True)
class LockInfo:
    """One lock found in the store."""

    name: str
    kind: str          # "shared" or "exclusive"
    time_ns: int       # when it was made (its maker's clock)
    token: str
    pid: int
    host: str
    age: float | None  # seconds since it was last refreshed (storage's clock); None if unknown
    stale: bool

    @property
    def key(self) -> str:
        return f"{LOCK_DIR}/{self.name}"

    def describe(self) -> str:
        age = f"{self.age:.0f} s" if self.age is not None else "unknown age"
        return f"{self.kind} lock of pid {self.pid} on host {self.host} (refreshed {age} ago)"


def parse_lock_name(name: str) -> tuple[str, int, str, int, str] | None:
    """(kind, time_ns, token, pid, host) of a lock object's name, None for any other name."""
    m = _LOCK_NAME.match(name)
    if m is None:
        return None
    return _CODE_KIND[m.group(1)], int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)


@dataclass
class _Scan:
    others: list[LockInfo]  # live locks other than ours
    generation: int
    own_present: bool


@dataclass
class _Attempt:
    own: tuple[str, float] | None = None  # our lock's name, and when we last made or refreshed it
    backing_off: bool = False
    warned: bool = False
    blockers: list[LockInfo] = field(default_factory=list)


class StoreLock:
    """A held store lock: a context manager; ``release()`` is idempotent.

    ``generation`` is the deletion generation seen by the listing that granted it (updated by
    :meth:`Locks.bump`). ``lost`` turns True when the refresher finds the lock removed by someone
    else, or could not refresh it for ``stale_after`` seconds; :meth:`check` raises then.
    """

    def __init__(self, locks: "Locks", name: str, kind: str, generation: int, what: str) -> None:
        self._locks = locks
        self.name = name
        self.key = f"{LOCK_DIR}/{name}"
        self.kind = kind
        self.generation = generation
        self.what = what
        self.lost = False
        self.released = False
        self._lost_reason = ""
        self._mutex = threading.Lock()  # a refresh and the release never overlap
        self._thread = threading.get_ident()
        self._last_ok = time.monotonic()
        self._next_refresh = self._last_ok + locks.refresh_interval

    # -- state ----------------------------------------------------------------------------------
    def check(self, *, remote: bool = True) -> None:
        """Raise LockLostError if the lock is lost; with ``remote``, also look at the store now."""
        if self.released:
            raise LockLostError(f"the {self.kind} lock {self.name} on {self._locks.storage.url} was already "
                                f"released")
        if not self.lost and remote:
            try:
                present = self._locks.storage.exists(self.key)
            except StorageError as exc:
                raise LockLostError(f"cannot confirm the {self.kind} lock on {self._locks.storage.url}: {exc}") \
                    from exc
            if not present:
                self._mark_lost("it was removed by someone else, who took it for stale")
        if self.lost:
            raise LockLostError(
                f"the {self.kind} lock {self.name} held to {self.what} on {self._locks.storage.url} was lost: "
                f"{self._lost_reason}. Another process may have begun to change the store, so this operation "
                f"must not go on: run it again (was this process suspended, or is this host's clock wrong?)")

    def _mark_lost(self, reason: str) -> None:
        if not self.lost:
            self.lost = True
            self._lost_reason = reason
            log.error("store lock %s on %s lost: %s", self.name, self._locks.storage.url, reason)
        _refresher.remove(self)

    def _refresh(self) -> None:
        """Move our lock's mtime (called by the refresher thread)."""
        with self._mutex:
            if self.released or self.lost:
                return
            now = time.monotonic()
            try:
                self._locks.storage.touch(self.key)
            except MissingBlobError:
                self._mark_lost("it was removed by someone else, who took it for stale")
                return
            except Exception as exc:  # network trouble: retry soon; give up once others may call it stale
                if now - self._last_ok > self._locks.stale_after:
                    self._mark_lost(f"it could not be refreshed for {now - self._last_ok:.0f} s ({exc})")
                else:
                    log.warning("could not refresh store lock %s on %s (%s); retrying", self.name,
                                self._locks.storage.url, exc)
                    self._next_refresh = now + min(self._locks.refresh_interval, 1.0)
                return
            self._last_ok = now
            self._next_refresh = now + self._locks.refresh_interval

    def release(self) -> None:
        """Remove the lock from the store; safe to call more than once."""
        with self._mutex:
            if self.released:
                return
            self.released = True
            _refresher.remove(self)
            try:
                self._locks.storage.delete(self.key)
            except StorageError as exc:  # it goes stale and is removed by the next locker
                log.warning("could not remove store lock %s on %s: %s", self.name, self._locks.storage.url, exc)

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "lost" if self.lost else "held"
        return f"StoreLock({self.kind}, {self.name!r}, generation={self.generation}, {state})"


class _Refresher:
    """One daemon thread per process that refreshes every held lock when it is due."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: set[StoreLock] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, lock: StoreLock) -> None:
        with self._guard:
            self._held.add(lock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ckpt-lock-refresher", daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, lock: StoreLock) -> None:
        with self._guard:
            self._held.discard(lock)

    def held(self) -> list[StoreLock]:
        with self._guard:
            return list(self._held)

    def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            next_due = now + 60.0
            for lock in self.held():
                if lock._next_refresh <= now:
                    try:
                        lock._refresh()
                    except Exception as exc:  # pragma: no cover - never let the thread die
                        log.warning("store lock refresh failed: %s", exc)
                next_due = min(next_due, lock._next_refresh)
            self._wake.wait(max(0.005, next_due - time.monotonic()))


_refresher = _Refresher()


def _after_fork_in_child() -> None:
    # The parent still refreshes its locks; a child starts with none and its own thread.
    global _refresher
    _refresher = _Refresher()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Locks:
    """Shared/exclusive store locks and the deletion generation on one :class:`Storage`."""

    def __init__(self, storage: Storage, *, stale_after: float | None = None, timeout: float | None = None) -> None:
        self.storage = storage
        self.stale_after = float(stale_after if stale_after is not None
                                 else _env_float("CKPT_LOCK_STALE_SECONDS", 300.0))
        self.timeout = float(timeout if timeout is not None else _env_float("CKPT_LOCK_TIMEOUT", 600.0))
        if self.stale_after <= 0:
            raise ValueError(f"stale_after must be > 0, not {self.stale_after}")
        self.refresh_interval = self.stale_after / 5
        self.host = this_host()

    # -- public ---------------------------------------------------------------------------------
    def shared(self, what: str = "save", timeout: float | None = None) -> StoreLock:
        """A shared lock (saves): many at once, none while an exclusive lock is held or wanted."""
        return self._acquire(SHARED, what, self.timeout if timeout is None else timeout)

    def exclusive(self, what: str = "gc", timeout: float | None = None) -> StoreLock:
        """The exclusive lock (gc, rm, prune, reindex): blocks new shared locks at once, then waits
        for the current holders."""
        return self._acquire(EXCLUSIVE, what, self.timeout if timeout is None else timeout)

    def generation(self) -> int:
        """The current deletion generation (0 when none was ever made)."""
        return _highest_generation(self.storage.list(LOCK_DIR))

    def bump(self, lock: StoreLock) -> int:
        """Start a new deletion generation (exclusive holders, before deleting anything); returns it."""
        if lock.kind != EXCLUSIVE or lock._locks.storage is not self.storage:
            raise ValueError("bump() needs the exclusive lock of this store")
        lock.check()
        for _ in range(5):
            entries = self.storage.list(LOCK_DIR)
            current = _highest_generation(entries)
            try:
                self.storage.put(gen_key(current + 1), b"", create_only=True)
            except FileExistsError:  # only if someone else bumps too: look again
                continue
            for e in entries:
                m = _GEN_NAME.match(e.name)
                if m is not None and int(m.group(1)) < current - 1:
                    self.storage.delete(f"{LOCK_DIR}/{e.name}")
            lock.generation = current + 1
            return current + 1
        raise StorageError(f"could not start a new deletion generation in {self.storage.url}: another process "
                           f"keeps making them although this one holds the exclusive lock")

    def holders(self) -> list[LockInfo]:
        """Every lock in the store now (stale ones included, flagged; nothing is removed)."""
        now = time.time()
        out = []
        for e in self.storage.list(LOCK_DIR):
            info = self._info(e, now)
            if info is not None:
                out.append(info)
        return sorted(out, key=lambda i: (i.time_ns, i.token))

    # -- internals ------------------------------------------------------------------------------
    def _info(self, e: Entry, server_now: float) -> LockInfo | None:
        parsed = parse_lock_name(e.name)
        if parsed is None:
            return None
        kind, t, token, pid, host = parsed
        age = max(0.0, server_now - e.mtime) if e.mtime is not None else None
        stale = (host == self.host and not pid_alive(pid)) or (age is not None and age > self.stale_after)
        return LockInfo(e.name, kind, t, token, pid, host, age, stale)

    def _create(self, kind: str) -> tuple[str, float]:
        name = (f"{_KIND_CODE[kind]}-{time.time_ns():020d}-{secrets.token_hex(4)}-{os.getpid()}-"
                f"{self.host}.lock")
        try:
            self.storage.put(f"{LOCK_DIR}/{name}", b"", create_only=True)
        except FileExistsError:  # a retried request whose first try got through: the name is ours alone
            pass
        return name, time.time()

    def _scan(self, own: tuple[str, float] | None) -> _Scan:
        """List the lock directory; remove stale locks; the live ones other than ours."""
        entries = self.storage.list(LOCK_DIR)
        # Ages are measured on the storage's clock: our own lock's mtime, against when we last
        # made or refreshed it, gives the offset of that clock from ours.
        offset = 0.0
        own_present = False
        if own is not None:
            for e in entries:
                if e.name == own[0]:
                    own_present = True
                    if e.mtime is not None:
                        offset = e.mtime - own[1]
                    break
        now = time.time() + offset
        others = []
        for e in entries:
            if own is not None and e.name == own[0]:
                continue
            info = self._info(e, now)
            if info is None:
                continue
            if info.stale:
                if self.storage.delete(info.key):
                    log.warning("removed a stale %s from %s", info.describe(), self.storage.url)
                continue
            others.append(info)
        return _Scan(others, _highest_generation(entries), own_present)

    def _acquire(self, kind: str, what: str, timeout: float) -> StoreLock:
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 0.02
        state = _Attempt()
        try:
            while True:
                lock = self._attempt(kind, what, state)
                if lock is not None:
                    return lock
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._busy(kind, what, timeout, state.blockers)
                time.sleep(min(remaining, delay * random.uniform(0.8, 1.2)))
                delay = min(delay * 1.5, MAX_POLL, self.refresh_interval)
        finally:
            if state.own is not None:
                try:
                    self.storage.delete(f"{LOCK_DIR}/{state.own[0]}")
                except StorageError:  # pragma: no cover - it goes stale
                    pass

    def _attempt(self, kind: str, what: str, state: "_Attempt") -> StoreLock | None:
        """One look at the lock directory: the lock if granted, else None with ``state.blockers`` set."""
        if state.backing_off:  # our lock is removed: look without one until the way seems clear
            state.blockers = [i for i in self._scan(None).others if i.kind == EXCLUSIVE]
            if state.blockers:
                return None
            state.backing_off = False
        if state.own is None:
            state.own = self._create(kind)
        elif time.time() - state.own[1] > self.refresh_interval:  # a long wait: keep ours fresh
            try:
                self.storage.touch(f"{LOCK_DIR}/{state.own[0]}")
                state.own = (state.own[0], time.time())
            except MissingBlobError:
                state.own = None
                return None
        scan = self._scan(state.own)
        if not scan.own_present:  # someone took ours for stale: make a new one next time
            state.own = None
            return None
        state.blockers, back_off = self._blockers(kind, state.own[0], scan.others)
        if not state.blockers:
            name, touched = state.own
            lock = StoreLock(self, name, kind, scan.generation, what)
            lock._next_refresh = time.monotonic() + max(0.0, self.refresh_interval - (time.time() - touched))
            state.own = None
            _refresher.add(lock)
            return lock
        if back_off:
            self.storage.delete(f"{LOCK_DIR}/{state.own[0]}")
            state.own = None
            state.backing_off = True
        self._warn_if_own(kind, what, state)
        return None

    @staticmethod
    def _blockers(kind: str, own_name: str, others: list[LockInfo]) -> tuple[list[LockInfo], bool]:
        """(the live locks we must wait for, whether to remove ours meanwhile)."""
        exclusive = [i for i in others if i.kind == EXCLUSIVE]
        if kind == SHARED:
            return exclusive, bool(exclusive)
        ours = parse_lock_name(own_name)
        assert ours is not None
        older = [i for i in exclusive if (i.time_ns, i.token) < (ours[1], ours[2])]
        if older:
            return older, True
        return others, False  # younger exclusives are backing off or hold the store; shared ones finish

    def _warn_if_own(self, kind: str, what: str, state: "_Attempt") -> None:
        """Waiting only for locks this same thread took is probably a deadlock (no reentrancy): say so
        once. (Not an error: another thread may be the one that releases them.)"""
        if state.warned:
            return
        mine = {lock.name for lock in _refresher.held()
                if lock._locks.storage is self.storage and lock._thread == threading.get_ident()}
        if state.blockers and all(i.name in mine for i in state.blockers):
            state.warned = True
            log.warning("waiting for the %s lock on %s to %s, but this thread itself holds the %s lock that "
                        "blocks it; release that first (locks are not reentrant)", kind, self.storage.url,
                        what, state.blockers[0].kind)

    def _busy(self, kind: str, what: str, timeout: float, blockers: list[LockInfo]) -> StoreBusyError:
        held_by = "; ".join(i.describe() for i in blockers) or "another process"
        return StoreBusyError(
            f"could not get the {kind} lock on {self.storage.url} to {what} within {timeout:g} s: it is held "
            f"by {held_by}. Wait for that to finish and retry, or raise CKPT_LOCK_TIMEOUT. A lock whose process "
            f"died is removed automatically (at once on the same host, after {self.stale_after:.0f} s without "
            f"refresh elsewhere, CKPT_LOCK_STALE_SECONDS); if you are sure no ckpt process uses the store, "
            f"delete those files from {self.storage.url}/{LOCK_DIR}/.", blockers)


def _highest_generation(entries: list[Entry]) -> int:
    best = 0
    for e in entries:
        m = _GEN_NAME.match(e.name)
        if m is not None:
            best = max(best, int(m.group(1)))
    return best
