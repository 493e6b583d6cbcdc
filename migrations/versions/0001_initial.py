"""initial schema: runs, checkpoints, metrics, tags, packs, tensors, refs

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("objective_metric", sa.String(256), nullable=True),
        sa.Column("objective_mode", sa.String(8), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("host", sa.String(256), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("step_key", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("logical_size", sa.BigInteger(), nullable=False),
        sa.Column("new_bytes", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.String(256), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.UniqueConstraint("run_id", "epoch", "step_key", name="uq_checkpoint_run_epoch_step"),
    )
    op.create_index("ix_checkpoints_run_seq", "checkpoints", ["run_id", "seq"])
    op.create_index("ix_checkpoints_status_seq", "checkpoints", ["status", "seq"])
    op.create_table(
        "metrics",
        sa.Column("checkpoint_id", sa.String(32), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("raw", sa.String(64), nullable=False),
    )
    op.create_index("ix_metrics_name_value", "metrics", ["name", "value"])
    op.create_table(
        "tags",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("checkpoint_id", sa.String(32), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_tags_checkpoint_id", "tags", ["checkpoint_id"])
    op.create_table(
        "packs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "tensors",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("pack_id", sa.String(32), sa.ForeignKey("packs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(32), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("shape", sa.Text(), nullable=False),
    )
    op.create_table(
        "refs",
        sa.Column("checkpoint_id", sa.String(32), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("pack_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_refs_pack", "refs", ["pack_id"])
    op.create_index("ix_refs_hash", "refs", ["hash"])


def downgrade() -> None:
    for table in ("refs", "tensors", "packs", "tags", "metrics", "checkpoints", "runs"):
        op.drop_table(table)
