"""The result store's tables, as SQLAlchemy declares them. The migrations in
``server/store/migrations/versions`` create them; a change here needs a new migration there.

Timestamps are stored in UTC and always read back timezone-aware (``UtcDateTime``); statuses are
their enums' values in plain strings (no native enum types: adding a status needs no ALTER TYPE).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from server.store.model import CallbackStatus, JobStatus


class ItemStatus(str, Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out. SQLite keeps no zone, so the value is
    stored as naive UTC there (fixed-width text: it still sorts and compares in time order)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the result store takes timezone-aware datetimes only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _values(enum: type[Enum]) -> list[str]:
    return [str(member.value) for member in enum]


def _status(enum: type[Enum]) -> SqlEnum:
    # Non-native: a VARCHAR holding the value ("queued"), read back as the enum member.
    return SqlEnum(enum, native_enum=False, create_constraint=False, length=16, values_callable=_values)


# JSONB on PostgreSQL (indexable, compact); SQLite keeps JSON as text.
Json = JSON().with_variant(JSONB(), "postgresql")

# Constraint names Alembic can find again in a later migration.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """uuid4 hex."""
    owner: Mapped[str] = mapped_column(Text)
    status: Mapped[JobStatus] = mapped_column(_status(JobStatus))
    model: Mapped[str] = mapped_column(Text)
    top_k: Mapped[int] = mapped_column(Integer)
    callback_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """First claimed; a job taken over after a crash keeps its first start."""
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    images_total: Mapped[int] = mapped_column(Integer)
    images_done: Mapped[int] = mapped_column(Integer, default=0)
    """Items with an outcome (done or failed)."""
    claimed_by: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """While running: past it, the runner is presumed dead and another may claim the job."""
    callback_status: Mapped[CallbackStatus] = mapped_column(_status(CallbackStatus))
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0)
    callback_error: Mapped[str | None] = mapped_column(Text)
    callback_next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """Set when the job ends (now) and after a failed attempt; NULL when none is due."""

    __table_args__ = (
        # The claim: the oldest queued job, or a running one whose lease ran out.
        Index(None, "status", "created_at"),
        # Admission counts a client's unfinished jobs.
        Index(None, "owner", "status"),
        Index(None, "callback_status", "callback_next_attempt_at"),
        # Pruning by age.
        Index(None, "finished_at"),
    )


class JobItem(Base):
    """One image of a job. Its bytes are held until it has an outcome (or the job ends)."""

    __tablename__ = "job_items"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    image: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[ItemStatus] = mapped_column(_status(ItemStatus))
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)
    error: Mapped[dict[str, str] | None] = mapped_column(Json)


class StoredResult(Base):
    """A synchronous request's answer. Keyed by request id *and* owner: a client may choose its
    request id (X-Request-ID), so two clients' ids can be equal; neither may see or replace the
    other's answer."""

    __tablename__ = "results"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    result: Mapped[dict[str, Any]] = mapped_column(Json)
    sha256: Mapped[str | None] = mapped_column(String(64))
    """The request's image, when it had one."""


class KeptImage(Base):
    """An image kept on disk (``keep_images``), once per distinct content."""

    __tablename__ = "kept_images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    """Relative to the images folder: ``<sha256[:2]>/<sha256>``."""
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
