"""The index's tables as SQLAlchemy 2.x typed models.

The index is a cache of what the manifests say plus mutable state (run status, tags): it can be rebuilt
from storage with ``reindex``. Migrations in ``migrations/versions`` must produce exactly these tables
(a test compares them).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    objective_metric: Mapped[str | None] = mapped_column(String(256))
    objective_mode: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    host: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "step_key", name="uq_checkpoint_run_epoch_step"),
        Index("ix_checkpoints_run_seq", "run_id", "seq"),
        Index("ix_checkpoints_status_seq", "status", "seq"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(BigInteger)
    # step, or commit.NO_STEP when there is none: NULLs never collide in a UNIQUE constraint.
    step_key: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12))  # pending | committed | deleting
    seq: Mapped[int | None] = mapped_column(BigInteger)  # commit order, set when committed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(String(32))
    logical_size: Mapped[int] = mapped_column(BigInteger, default=0)
    new_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    host: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)

    run: Mapped[Run] = relationship(lazy="joined")
    metrics: Mapped[list[Metric]] = relationship(lazy="selectin", cascade="all, delete-orphan",
                                                 order_by="Metric.position")
    tags: Mapped[list[Tag]] = relationship(lazy="selectin", cascade="all, delete-orphan")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_name_value", "name", "value"),)

    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"),
                                               primary_key=True)
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    # Finite values only: NaN and +-inf are NULL here (so they never win "best") and kept in `raw`.
    value: Mapped[float | None] = mapped_column(Float)
    raw: Mapped[str] = mapped_column(String(64))


class Tag(Base):
    __tablename__ = "tags"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Pack(Base):
    __tablename__ = "packs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12), default="live")  # live | deleting
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TensorBlob(Base):
    """Where a tensor's bytes live. A hash may live in several packs (concurrent writers)."""

    __tablename__ = "tensors"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(ForeignKey("packs.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    codec: Mapped[str] = mapped_column(String(32))
    dtype: Mapped[str] = mapped_column(String(32))
    shape: Mapped[str] = mapped_column(Text)


class Ref(Base):
    """A checkpoint's use of a tensor in a pack: what gc must keep. Written before the pack (pending)."""

    __tablename__ = "refs"
    __table_args__ = (Index("ix_refs_pack", "pack_id"), Index("ix_refs_hash", "hash"))

    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"),
                                               primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(32))
