"""The index's tables as SQLAlchemy 2.x typed models.

The index is a cache of what the manifests say plus mutable state (run status, tags) and the claims
of saves in flight: it can be rebuilt from storage with ``reindex``. Rows grow with checkpoints,
packs and unique tensors, never with checkpoints x tensors. Migrations in ``migrations/versions``
must produce exactly these tables (a test compares them).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, DateTime, Float, ForeignKey, Index, Integer, SmallInteger, String, Text,
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
        UniqueConstraint("run_id", "epoch", "step_key", "variant", name="uq_checkpoint_key"),
        Index("ix_checkpoints_run_seq", "run_id", "seq"),
        Index("ix_checkpoints_status_seq", "status", "seq"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    epoch: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int | None] = mapped_column(BigInteger)
    # step, or validation.NO_STEP when there is none: NULLs never collide in a UNIQUE constraint.
    step_key: Mapped[int] = mapped_column(BigInteger)
    # Two saves at one (run, epoch, step) with different content (a weights-only and a full Lightning
    # checkpoint) are told apart by a variant name; "" is the ordinary checkpoint.
    variant: Mapped[str] = mapped_column(String(64), default="", server_default="")
    format: Mapped[int] = mapped_column(SmallInteger, default=2, server_default="1")  # manifest format
    status: Mapped[str] = mapped_column(String(12))  # pending | committed
    seq: Mapped[int | None] = mapped_column(BigInteger)  # commit order, set when committed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(String(32))
    logical_size: Mapped[int] = mapped_column(BigInteger, default=0)
    new_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    host: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)

    # Loaded only when touched: queries build CheckpointInfo in set-based statements (queries.infos), and a
    # save's index writes never need them.
    run: Mapped[Run] = relationship(lazy="select")
    metrics: Mapped[list[Metric]] = relationship(lazy="select", cascade="all, delete-orphan",
                                                 order_by="Metric.position")
    tags: Mapped[list[Tag]] = relationship(lazy="select", cascade="all, delete-orphan")


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
    """Where a tensor's bytes live: one row per (hash, pack), what dedup looks up (by ``check``)."""

    __tablename__ = "tensors"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(ForeignKey("packs.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    codec: Mapped[str] = mapped_column(String(32))
    dtype: Mapped[str] = mapped_column(String(32))
    shape: Mapped[str] = mapped_column(Text)
    check: Mapped[str | None] = mapped_column(String(32), index=True)  # xxh3-128 of the raw bytes


class CheckpointPack(Base):
    """A pack a checkpoint reads from: one row per (checkpoint, pack), what deletion frees by."""

    __tablename__ = "checkpoint_packs"

    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class Claim(Base):
    """A new tensor (by checksum) that a save in flight is writing: concurrent savers of the same bytes
    wait for it instead of writing their own copy. Removed when that save commits or is abandoned."""

    __tablename__ = "claims"

    check: Mapped[str] = mapped_column(String(32), primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    host: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)


class Meta(Base):
    """Facts about the index itself: which store it belongs to, which deletion generation it has seen."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
