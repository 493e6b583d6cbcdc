"""Engines and transactions for the index.

SQLite runs in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so
concurrent writers queue for the lock instead of failing with "database is locked" halfway through.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from ckpt.errors import StorageError

BUSY_TIMEOUT_MS = 60_000
_WRITE = "ckpt_write"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        in_memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # A pooled SQLite connection that outlives a fork or gets closed by another handle loses its
            # POSIX locks; opening per use is cheap for SQLite, except in memory where it must persist.
            poolclass=StaticPool if in_memory else NullPool,
        )
        _configure_sqlite(engine, in_memory)
    else:
        engine = create_engine(url, pool_pre_ping=True)
        _configure_server(engine)
    return engine


def _configure_sqlite(engine: Engine, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=FULL")  # a returned save survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _configure_server(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get(_WRITE) and conn.dialect.name == "postgresql":
            # Serialize writers the way SQLite's write lock does; held until commit.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724159)")


class Index:
    """Session factories over one engine: ``read()`` for queries, ``write()`` for serialized writes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
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
    def write(self) -> Iterator[Session]:
        """One serialized write transaction, retried while the database reports it is busy."""
        self._check_fork()
        with _retry_locked():
            with self._write_sessions() as session, session.begin():
                yield session

    def write_txn(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Run ``fn(session, ...)`` in a write transaction, retrying the whole of it on lock timeouts."""
        self._check_fork()
        delay = 0.05
        deadline = time.monotonic() + 300
        while True:
            try:
                with self._write_sessions() as session, session.begin():
                    return fn(session, *args, **kwargs)
            except OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() > deadline:
                    raise StorageError(f"index database error: {exc.orig}") from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

    def dispose(self) -> None:
        self.engine.dispose()


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


@contextmanager
def _retry_locked() -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        if _is_locked(exc):
            raise StorageError(f"the index stayed locked for more than {BUSY_TIMEOUT_MS // 1000} s; another "
                               f"process holds a long write transaction: {exc.orig}") from exc
        raise
