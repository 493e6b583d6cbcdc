"""Engines and transactions for the index: SQLite for one machine, PostgreSQL (or another server) for many.

SQLite runs in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so
concurrent writers queue for the lock instead of failing with "database is locked" halfway through.

PostgreSQL gets the same discipline from a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) taken as the first statement of every write transaction, migrations
included: writers from any number of processes and hosts queue on it, exactly one holds it, and it is
released by COMMIT, ROLLBACK or the death of the connection, so a killed writer never leaves it held.
Reads take no lock (READ COMMITTED sees only committed rows). The lock key is derived from the
current schema, so stores kept in different schemas of one database do not wait for each other.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool, StaticPool

from ckpt.errors import StorageError

BUSY_TIMEOUT_MS = 60_000
#: How long a whole write transaction is retried (lock waits, deadlocks, dropped connections).
WRITE_DEADLINE_S = 300.0
_WRITE = "ckpt_write"
_DURABLE = "ckpt_durable"
#: First key of the two-key advisory lock every ckpt writer takes (the second is the schema's hash).
PG_LOCK_CLASS = 724159
#: SQLSTATEs after which the whole transaction may simply be run again.
_PG_RETRY_STATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (our lock_timeout expired while queued for the writer lock)
    "57P01", "57P02", "57P03",  # the server is shutting down / restarting: reconnect and retry
    "08000", "08003", "08006", "08001", "08004",  # connection exceptions
}


def display_url(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # pragma: no cover - a URL SQLAlchemy cannot parse fails later, clearly
        return url


def readonly_sqlite_url(url: str, immutable: bool = False) -> str:
    """``sqlite:///PATH`` opened read-only through SQLite's URI form (no WAL switch, no schema writes);
    ``immutable`` also skips the -shm/-wal files, for a directory that cannot be written at all."""
    path = url[len("sqlite:///"):]
    from urllib.parse import quote
    return f"sqlite:///file:{quote(path)}?mode=ro{'&immutable=1' if immutable else ''}&uri=true"


def make_engine(url: str, readonly: bool = False) -> Engine:
    if url.startswith("sqlite"):
        in_memory = url in ("sqlite://", "sqlite:///:memory:")
        readonly = readonly and not in_memory
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # Connections are kept (closing the last one checkpoints the WAL, ~10 ms a save) and never
            # reused across a fork (Index._check_fork). SQLite tracks locks per inode across handles.
            poolclass=StaticPool if in_memory else QueuePool,
        )
        _configure_sqlite(engine, in_memory or readonly)
        return engine
    u = make_url(url)
    kwargs: dict = {"pool_pre_ping": True, "pool_recycle": 1800}
    if u.get_backend_name() == "postgresql":
        # A training process holds at most a couple of connections at once (a read and a write);
        # many ranks times a big pool would exhaust max_connections for nothing.
        kwargs.update(pool_size=2, max_overflow=6, pool_timeout=WRITE_DEADLINE_S)
        if u.get_driver_name() in ("psycopg", "psycopg2") and "application_name" not in u.query:
            kwargs["connect_args"] = {"application_name": "ckpt"}
    engine = create_engine(url, **kwargs)
    _configure_server(engine)
    return engine


def _configure_sqlite(engine: Engine, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not in_memory:
            _enable_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        options = conn.get_execution_options()
        if options.get(_WRITE):
            # Durable transactions fsync the WAL at COMMIT (and with it every earlier frame); the
            # intermediate steps of a save skip that fsync: a crash before the final commit loses them
            # either way, and recovery handles that.
            conn.exec_driver_sql("PRAGMA synchronous=" + ("FULL" if options.get(_DURABLE, True) else "NORMAL"))
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _enable_wal(cur) -> None:  # type: ignore[no-untyped-def]
    """Switch to WAL. On a new index another opener may hold the lock: switching answers "busy" at once
    (the busy timeout does not apply to it), so retry with backoff."""
    delay, deadline = 0.01, time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not ("locked" in str(exc).lower() or "busy" in str(exc).lower()) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


def _configure_server(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":  # pragma: no cover - other servers: their own row locks only
        return

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get(_WRITE):
            # Serialize writers the way SQLite's write lock does; held until COMMIT/ROLLBACK. Waiting is
            # bounded like SQLite's busy timeout; write_txn retries after it, up to WRITE_DEADLINE_S.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{BUSY_TIMEOUT_MS}ms'")
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK_CLASS}, hashtext(current_schema()))")


class Index:
    """Session factories over one engine: ``read()`` for queries, ``write()`` for serialized writes."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = display_url(url)  # for messages: never shows a password
        self.raw_url = url
        self.readonly = readonly
        self.engine = make_engine(url, readonly)
        self.dialect = self.engine.dialect.name
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._fast_write_engine = self.engine.execution_options(**{_WRITE: True, _DURABLE: False})
        # A query of several statements (resolve, then read the rows it found) must see one state of
        # the index: SQLite's read transactions do; PostgreSQL's default READ COMMITTED gives each
        # statement its own snapshot, so reads there run REPEATABLE READ (read-only: it never fails).
        read_engine = (self.engine.execution_options(isolation_level="REPEATABLE READ")
                       if self.dialect == "postgresql" else self.engine)
        self._read_sessions = sessionmaker(read_engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
        self._fast_write_sessions = sessionmaker(self._fast_write_engine, expire_on_commit=False)
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # never reuse a parent's connections in a forked child
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def read(self) -> Iterator[Session]:
        self._check_fork()
        with self._read_sessions() as session:
            yield session

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A plain connection (no ORM session), for driver SQL."""
        self._check_fork()
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One serialized write transaction (not retried: prefer :meth:`write_txn`)."""
        self._check_fork()
        with _retry_locked():
            with self._write_sessions() as session, session.begin():
                yield session

    def write_txn(self, fn, *args, durable: bool = True, raw: bool = False, **kwargs):  # type: ignore[no-untyped-def]
        """Run ``fn(session, ...)`` in a write transaction, retrying the whole of it on lock timeouts,
        deadlocks and dropped server connections. ``durable=False`` skips the fsync at commit (SQLite)
        for steps whose loss a crash recovery handles anyway. ``raw=True`` passes a ``Raw`` (driver SQL on
        a plain connection, no ORM session): for the statements on every save's path."""
        self._check_fork()
        delay = 0.05
        deadline = time.monotonic() + WRITE_DEADLINE_S
        while True:
            try:
                if raw:
                    from ckpt.catalog.raw import Raw
                    engine = self._write_engine if durable else self._fast_write_engine
                    with engine.begin() as conn:
                        return fn(Raw(conn), *args, **kwargs)
                sessions = self._write_sessions if durable else self._fast_write_sessions
                with sessions() as session, session.begin():
                    return fn(session, *args, **kwargs)
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise StorageError(f"no space left on the device holding the index {self.url}; free space "
                                       f"(try `ckpt prune` then `ckpt gc`) and retry. Nothing already committed "
                                       f"was changed.") from exc
                if not retryable(exc) or time.monotonic() > deadline:
                    # Never let a raw driver error (IntegrityError, DataError...) reach a saver.
                    raise StorageError(f"index database error ({self.url}): {exc.orig}; the index is only a "
                                       f"cache: `ckpt reindex` rebuilds it from storage") from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

    def dispose(self) -> None:
        self.engine.dispose()


def retryable(exc: DBAPIError) -> bool:
    """Whether running the transaction again may succeed: a busy lock, a deadlock, a lost connection."""
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if state in _PG_RETRY_STATES:
        return True
    if exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and _is_locked(exc)


def _is_locked(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


@contextmanager
def _retry_locked() -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        if _is_locked(exc) or getattr(exc.orig, "sqlstate", None) == "55P03":
            raise StorageError(f"the index stayed locked for more than {BUSY_TIMEOUT_MS // 1000} s; another "
                               f"process holds a long write transaction: {exc.orig}") from exc
        raise
