"""Alembic migrations: they build exactly the models' schema, atomically, and refuse the future."""

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
import torch
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ckpt import CheckpointStore, SchemaVersionError
from ckpt.catalog.migrate import head_revision
from ckpt.catalog.schema import Base


def test_migrations_produce_the_models_schema(tmp_path):
    store = CheckpointStore(tmp_path / "s")
    with store.index.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_newer_schema_is_refused_with_advice(tmp_path):
    store = CheckpointStore(tmp_path / "s")
    store.save("r", 0, {"x": torch.ones(1)})
    store.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's' / 'index.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'fffffffff999'"))
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError, match="upgrade ckpt"):
            CheckpointStore(tmp_path / "s", readonly=readonly)


def test_readonly_open_never_migrates_an_old_schema(tmp_path):
    store = CheckpointStore(tmp_path / "s")
    store.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's' / 'index.sqlite'}")
    with engine.begin() as conn:  # pretend the index predates the current head
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaVersionError):
        CheckpointStore(tmp_path / "s", readonly=True)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0000"


KILL_MID_MIGRATION = textwrap.dedent("""
    import os, sys
    import alembic.command
    real = alembic.command.upgrade
    def upgrade_then_die(cfg, rev):
        real(cfg, rev)          # every table is created inside the open transaction...
        os._exit(9)             # ...and the process dies before it commits
    alembic.command.upgrade = upgrade_then_die
    from ckpt import CheckpointStore
    CheckpointStore(sys.argv[1])
""")


def test_kill_during_migration_leaves_old_schema_then_recovers(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_MID_MIGRATION)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "s")], timeout=120)
    assert proc.returncode == 9
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's' / 'index.sqlite'}")
    assert sa.inspect(engine).get_table_names() == []  # all or nothing: nothing
    store = CheckpointStore(tmp_path / "s")
    store.save("r", 0, {"x": torch.ones(1)})
    with store.index.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (head_revision(),)


def test_head_constant_is_alembics_head():
    from ckpt.catalog.migrate import HEAD
    assert HEAD == head_revision()  # bump HEAD with every new migration
