"""Plain, immutable records the public API returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint as the index knows it."""

    id: str
    run: str
    epoch: int
    step: int | None
    metrics: dict[str, float]
    content_hash: str
    parent: str | None
    created_at: datetime
    logical_size: int  # bytes of tensor data the checkpoint holds
    new_bytes: int  # bytes this save actually wrote to storage (the rest was deduplicated)
    tags: tuple[str, ...] = ()
    status: str = "committed"
    variant: str = ""  # tells two checkpoints at one (run, epoch, step) apart ("weights"...); "" usually
    format: int = 2  # manifest format on storage

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run": self.run, "epoch": self.epoch, "step": self.step,
                "metrics": dict(self.metrics), "content_hash": self.content_hash, "parent": self.parent,
                "created_at": self.created_at.isoformat(), "logical_size": self.logical_size,
                "new_bytes": self.new_bytes, "tags": list(self.tags), "status": self.status,
                "variant": self.variant}


@dataclass(frozen=True)
class RunInfo:
    name: str
    status: str  # running | completed | failed | interrupted | crashed
    objective: str | None
    mode: str | None
    created_at: datetime
    updated_at: datetime
    host: str | None
    pid: int | None
    checkpoints: int = 0
    latest_epoch: int | None = None
    best_value: float | None = None


@dataclass(frozen=True)
class LoadReport:
    """What ``load_into`` did: keys it could not fill and keys the checkpoint had in excess."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    loaded: int
    checkpoint: CheckpointInfo | None = None


@dataclass
class Problem:
    kind: str  # e.g. missing-manifest, corrupt-tensor, unindexed-manifest
    subject: str  # checkpoint id, pack id or path
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


@dataclass
class VerifyReport:
    checkpoints: int = 0
    packs: int = 0
    tensors_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class TensorChange:
    key: str
    max_abs_diff: float | None
    rel_l2: float | None


@dataclass
class CheckpointDiff:
    a: CheckpointInfo
    b: CheckpointInfo
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    shape_or_dtype: list[tuple[str, str, str]] = field(default_factory=list)
    changed: list[TensorChange] = field(default_factory=list)
    identical: int = 0
    values: list[tuple[str, Any, Any]] = field(default_factory=list)
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
