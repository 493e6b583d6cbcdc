"""Apply Alembic migrations on open, inside one write transaction; refuse schemas from the future."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ckpt.errors import SchemaVersionError
from ckpt.index.engine import Index


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("ckpt.migrations")))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()  # type: ignore[return-value]


def current_revision(index: Index) -> str | None:
    with index.engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


def ensure_schema(index: Index, *, readonly: bool) -> None:
    """Bring the index to the head revision, or explain why it cannot be used."""
    script = ScriptDirectory.from_config(_config())
    head = script.get_current_head()
    known = {rev.revision for rev in script.walk_revisions()}
    current = current_revision(index)
    if current == head:
        return
    if current is not None and current not in known:
        raise SchemaVersionError(
            f"the index at {index.url} has schema revision {current!r}, newer than this ckpt understands "
            f"(head {head!r}); upgrade ckpt (`pip install -U ckpt`) to open it")
    if readonly and current is not None:  # a fresh (or lost) index is created, never migrated
        raise SchemaVersionError(
            f"the index at {index.url} has schema revision {current!r} but this ckpt needs {head!r}; "
            f"read-only commands never migrate: run `ckpt migrate` (or open the store for writing) first")
    cfg = _config()
    with index._write_engine.begin() as conn:  # one transaction: a kill leaves old or new, never half
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
