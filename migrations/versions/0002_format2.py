"""format 2: pins per pack (checkpoint_packs) instead of per tensor (refs), claims, meta, variants

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("variant", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("format", sa.SmallInteger(), nullable=False, server_default="1"))
        batch.alter_column("epoch", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
        batch.drop_constraint("uq_checkpoint_run_epoch_step", type_="unique")
        batch.create_unique_constraint("uq_checkpoint_key", ["run_id", "epoch", "step_key", "variant"])
    with op.batch_alter_table("tensors") as batch:
        batch.add_column(sa.Column("check", sa.String(32), nullable=True))
        batch.create_index("ix_tensors_check", ["check"])
    op.create_table(
        "checkpoint_packs",
        sa.Column("checkpoint_id", sa.String(32), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("pack_id", sa.String(32), primary_key=True),
    )
    op.create_index("ix_checkpoint_packs_pack_id", "checkpoint_packs", ["pack_id"])
    op.execute("INSERT INTO checkpoint_packs (checkpoint_id, pack_id) "
               "SELECT DISTINCT refs.checkpoint_id, refs.pack_id FROM refs "
               "JOIN checkpoints ON checkpoints.id = refs.checkpoint_id WHERE checkpoints.status = 'committed'")
    op.drop_index("ix_refs_pack", table_name="refs")
    op.drop_index("ix_refs_hash", table_name="refs")
    op.drop_table("refs")
    op.create_table(
        "claims",
        sa.Column("check", sa.String(32), primary_key=True),
        sa.Column("checkpoint_id", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("host", sa.String(256), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
    )
    op.create_index("ix_claims_checkpoint_id", "claims", ["checkpoint_id"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:  # pragma: no cover - the index is a cache: rebuild it instead
    raise NotImplementedError("downgrading the ckpt index is not supported; delete it and run `ckpt reindex`")
