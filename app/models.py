"""The tables: a report session is a row, each finished pipeline step is a row, and so is each user.

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
# The owner of a session made while the service was open (no users yet), or before accounts existed.
NO_OWNER = ""
# A user name: what `flask users create` accepts, the API's ?owner= filter admits, and sessions record.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


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
    # The user who submitted it (users.name, never renamed), or NO_OWNER. Not a foreign key: "no one"
    # takes its turns and has its counts like a user, so it needs a value every index can compare.
    owner: Mapped[str] = mapped_column(String(64), default=NO_OWNER, server_default=NO_OWNER)
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
        # A user's own listing, newest first.
        Index("ix_sessions_owner_newest", "owner", "created_at", "id"),
        # A user's listing by status, and the runner's queue of one owner (fair turns).
        Index("ix_sessions_status_owner_newest", "status", "owner", "created_at", "id"),
        # flask sessions cleanup: finished sessions by age.
        Index("ix_sessions_status_updated", "status", "updated_at"),
        # Heartbeats, lease hand-back and dead-owner recovery: rows held by one process.
        Index("ix_sessions_lease_owner", "lease_owner"),
    )


class SessionCount(db.Model):
    """How many sessions each owner has in each status, kept in the transaction of every change.

    GET /api/sessions reports a total with every page, the 404 detail names one too, and the
    quotas count a user's active sessions at every submit; counting rows for each would cost more
    than the request itself.
    """

    __tablename__ = "session_counts"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True, default=NO_OWNER)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)


class QueueTurn(db.Model):
    """Each owner's place in the runner's turns: the claim serves the owner whose last turn is oldest.

    Round robin: an owner who has never had a turn goes first (in the order they joined the queue),
    then whoever has waited longest since a session of theirs last started. So one user's long
    queue takes turns with everyone else's sessions instead of going first.
    """

    __tablename__ = "queue_turns"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Whether they have sessions queued (kept with their queued count): the claim looks only at
    # owners who wait, so everyone who ever queued something does not slow every claim down.
    waiting: Mapped[bool]
    last_turn_at: Mapped[float]  # unix seconds when a session of theirs last started; 0: never
    joined_at: Mapped[float]     # unix seconds when they first queued a session

    __table_args__ = (Index("ix_queue_turns_order", "waiting", "last_turn_at", "joined_at", "owner"),)


class User(db.Model):
    """Someone who may use the service: an API token, a password for the pages, or both.

    Only hashes are stored. Users are revoked, never deleted: their sessions keep their owner, and
    the service, closed since the first user was created, never opens again.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    # SHA-256 of the API token (tokens are random 256-bit strings, so a fast hash is enough); None: no token.
    token_hash: Mapped[Optional[str]] = mapped_column(String(64), unique=True)
    password_hash: Mapped[Optional[str]] = mapped_column(String(256))  # werkzeug's scrypt; None: no sign-in
    # Bumped by sign-out, revocation and a new password: every page sign-in made before it ends.
    sign_in_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)


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
