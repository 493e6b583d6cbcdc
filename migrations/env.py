"""Alembic environment. ckpt runs migrations itself (ckpt.catalog.migrate) on a connection it already
holds inside one write transaction, so a kill mid-upgrade leaves the old schema or the new one."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("ckpt migrations run through ckpt.catalog.migrate, not the alembic command line")

context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=True,  # SQLite needs batch mode for ALTER
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
