"""The tables: a report session is a row, and each finished pipeline step is a row.

Every write that changes execution state (claims, step commits, cancel, retry...) lives in
app/runner/store.py, so its invariants can be read in one place.
"""
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, TypeDecorator,
                        UniqueConstraint)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db

STATUSES = ("queued", "generating", "completed", "failed", "cancelled")
ACTIVE = ("queued", "generating")
FINISHED = ("completed", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: Optional[datetime]) -> Optional[str]:
    """ISO 8601 UTC with milliseconds and a Z, the one time format of the API."""
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes, stored as naive UTC (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use timezone-aware UTC")
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class ReportSession(db.Model):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID4, as text
    status: Mapped[str] = mapped_column(String(16))
    user_request: Mapped[str] = mapped_column(Text)
    requirements: Mapped[dict[str, Any]] = mapped_column(JSON)
    topic: Mapped[str] = mapped_column(String(200))  # requirements["topic"], for listing without JSON
    current_agent: Mapped[Optional[str]] = mapped_column(String(64))
    progress_message: Mapped[Optional[str]] = mapped_column(Text)  # the running step's latest news
    # Small public summaries steps add to the status document (the reviewer's findings, ...).
    status_fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[Optional[str]] = mapped_column(Text)
    failed_step: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)

    # The claim: which process runs the session, until when (unix seconds; renewed by heartbeats).
    lease_owner: Mapped[Optional[str]] = mapped_column(String(200))
    lease_expires_at: Mapped[Optional[float]]
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # resumes after a lost lease
    cancel_requested: Mapped[bool] = mapped_column(default=False)

    # The status endpoint's answer, rendered in the transaction of every state change, and the
    # version that each change bumps: a poll is one primary-key read, a 304 compares one integer.
    version: Mapped[int] = mapped_column(Integer, default=1)
    status_document: Mapped[str] = mapped_column(Text)

    steps: Mapped[list["Step"]] = relationship(
        back_populates="session", order_by="Step.position", cascade="all, delete-orphan", passive_deletes=True)

    __table_args__ = (
        # GET /api/sessions, newest first, keyset-paginated on (created_at, id).
        Index("ix_sessions_newest", "created_at", "id"),
        # Same with ?status=, and the runner's queue (status IN queued/generating).
        Index("ix_sessions_status_newest", "status", "created_at", "id"),
        # flask sessions cleanup: finished sessions by age.
        Index("ix_sessions_status_updated", "status", "updated_at"),
        # Heartbeats, lease hand-back and dead-owner recovery: rows held by one process.
        Index("ix_sessions_lease_owner", "lease_owner"),
    )


class SessionCount(db.Model):
    """How many sessions have each status, kept in the transaction of every change.

    GET /api/sessions reports a total with every page, and the 404 detail names one too;
    counting a million rows for each would cost more than the page itself.
    """

    __tablename__ = "session_counts"

    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)


class Step(db.Model):
    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    position: Mapped[int]
    output: Mapped[Any] = mapped_column(JSON)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)

    session: Mapped[ReportSession] = relationship(back_populates="steps")

    # One row per step of a session: a step's result is recorded exactly once.
    __table_args__ = (UniqueConstraint("session_id", "name"),)


class Artifact(db.Model):
    """A file a step made (a chart, the PDF), too large for the step's JSON output.

    Written in the same transaction as its step's row, so it exists exactly when the step does.
    """

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))  # unique per session: "chart-1.png", "report.pdf"
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("session_id", "name"),)
