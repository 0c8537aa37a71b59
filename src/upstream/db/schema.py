"""Every table of the hub, readable in one place.

Changes to these classes need a migration in `migrations/versions/`; a test compares
the migrated database with this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """A named model; its content lives in revisions."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    revisions: Mapped[list[Revision]] = relationship(
        back_populates="model", order_by="Revision.id", cascade="all, delete-orphan"
    )
    tags: Mapped[list[Tag]] = relationship(back_populates="model", cascade="all, delete-orphan")


class Revision(Base):
    """An immutable version of a model: a manifest of content-addressed files.

    `hash` is the sha256 of the canonical manifest JSON, so the same files always give
    the same revision id.
    """

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("model_id", "hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    hash: Mapped[str] = mapped_column(String(64), index=True)
    # {"schema": 1, "files": {relative path: {"sha256": ..., "size": ...}}}
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    architecture: Mapped[str] = mapped_column(String(100))
    num_parameters: Mapped[int] = mapped_column(Integer, default=0)
    # How it was made: {"kind": "bundled" | "gguf" | "hf_dir" | "hf_cache", ...}
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    card: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship(back_populates="revisions")
    parents: Mapped[list[RevisionParent]] = relationship(
        foreign_keys="RevisionParent.child_id", cascade="all, delete-orphan"
    )

    @property
    def total_size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())


class RevisionParent(Base):
    """Lineage: a revision made from others (a merge's base and contributions)."""

    __tablename__ = "revision_parents"

    child_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(40), default="base")


class Tag(Base):
    """A movable name for a revision of one model (`latest`, `v2`, user tags)."""

    __tablename__ = "tags"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship(back_populates="tags")
    revision: Mapped[Revision] = relationship()


class Job(Base):
    """A durable long operation; any worker may run it, a dead worker's job is retried."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # queued -> running -> done | failed; running with a stale heartbeat is claimable again
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_total: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str] = mapped_column(String(100), default="")
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
