"""Apply Alembic migrations on open, inside one write transaction; refuse schemas from the future.

The upgrade runs on a connection of the index's *write* engine, so it holds the same lock as every
writer (SQLite ``BEGIN IMMEDIATE``; PostgreSQL's transaction-scoped advisory lock): when many processes
or hosts open a new or old index at the same moment, one migrates and the others, once they get the
lock, find the head revision already there and do nothing. PostgreSQL runs DDL transactionally, so
there too a killed migration leaves the old schema or the new one, never half of it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from sqlalchemy.exc import DatabaseError, OperationalError

from ckpt.catalog.engine import Index
from ckpt.errors import IndexCorruptError, SchemaVersionError, StorageError

#: The newest revision in migrations/versions (a test checks it against Alembic's own answer). Opening an
#: index that is already there needs no Alembic at all: importing it costs a CLI command ~0.1 s.
HEAD = "0002"


def _config() -> Any:
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("ckpt.migrations")))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(_config()).get_current_head()  # type: ignore[return-value]


def _read_revision(conn: Any) -> str | None:
    """The revision recorded in ``alembic_version`` (None for an empty database), read with plain SQL."""
    from sqlalchemy import inspect
    if not inspect(conn).has_table("alembic_version"):
        return None
    rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return rows[0][0] if rows else None


def _damaged(exc: DatabaseError) -> bool:
    text = str(exc.orig).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _corrupt(index: Index, exc: DatabaseError) -> IndexCorruptError:
    return IndexCorruptError(f"the index database {index.url} is damaged ({exc.orig}). It is only a cache of "
                             f"what the store holds: run `ckpt reindex` to rebuild it from the manifests "
                             f"(the damaged file is kept beside it)")


def current_revision(index: Index) -> str | None:
    try:
        with index.engine.connect() as conn:
            return _read_revision(conn)
    except OperationalError as exc:
        if index.dialect == "sqlite" and _damaged(exc):
            raise _corrupt(index, exc) from exc
        raise StorageError(f"cannot open the index database {index.url}: {exc.orig}; check the URL, that "
                           f"the server is running and reachable, the database exists and the "
                           f"credentials are right") from exc
    except DatabaseError as exc:
        raise _corrupt(index, exc) from exc


def ensure_schema(index: Index, *, readonly: bool) -> None:
    """Bring the index to the head revision, or explain why it cannot be used."""
    current = current_revision(index)
    if current == HEAD:
        return
    from alembic.script import ScriptDirectory
    script = ScriptDirectory.from_config(_config())
    head = script.get_current_head()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise _newer(index, current, head)
    if readonly:  # read-only opens write nothing: the caller reads through a rebuilt in-memory index
        raise SchemaVersionError(
            f"the index at {index.url} has schema revision {current!r} but this ckpt needs {head!r}; "
            f"read-only opens never create or migrate it (open the store for writing once to migrate it)")
    if index.dialect == "sqlite" and index.raw_url.startswith("sqlite:///") and ":memory:" not in index.raw_url:
        _upgrade_sqlite_file(index, head, known)
        return
    index.write_txn(_upgrade, index, head, known)


def _upgrade_sqlite_file(index: Index, head: str, known: set[str]) -> None:
    """SQLite rebuilds a table to change its constraints (Alembic batch mode), and dropping the old one
    would cascade-delete the rows that reference it while foreign keys are enforced. So the upgrade runs
    on a connection of its own with them off (a pragma that only takes effect outside a transaction),
    still in one BEGIN IMMEDIATE transaction."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    from ckpt.catalog.engine import BUSY_TIMEOUT_MS, retryable
    engine = create_engine(index.raw_url, poolclass=NullPool,
                           connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        dbapi_conn.execute("PRAGMA foreign_keys=OFF")

    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                current = _read_revision(conn)
                if current != head:
                    if current is not None and current not in known:
                        raise _newer(index, current, head)
                    from alembic import command
                    cfg = _config()
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
    except OperationalError as exc:
        if retryable(exc):
            raise StorageError(f"the index {index.url} stayed locked while migrating it: {exc.orig}") from exc
        raise StorageError(f"migrating the index {index.url} failed: {exc.orig}") from exc
    finally:
        engine.dispose()


def _upgrade(session, index: Index, head: str, known: set[str]) -> None:  # type: ignore[no-untyped-def]
    """Inside the write lock: look again (another process may have migrated meanwhile), then upgrade."""
    conn = session.connection()  # begins the transaction, taking the writers' lock
    current = _read_revision(conn)
    if current == head:
        return
    if current is not None and current not in known:  # a newer ckpt migrated while we waited
        raise _newer(index, current, head)
    from alembic import command
    cfg = _config()
    cfg.attributes["connection"] = conn  # one transaction: a kill leaves old or new, never half
    command.upgrade(cfg, "head")


def _newer(index: Index, current: str, head: str) -> SchemaVersionError:
    exc = SchemaVersionError(f"the index at {index.url} has schema revision {current!r}, newer than this ckpt "
                             f"understands (head {head!r}); upgrade ckpt (`pip install -U ckpt`) to open it")
    exc.newer = True  # type: ignore[attr-defined]
    return exc
