"""Every read of execution state: status polls, listings, counts, a session, its report and its files.

The status poll and the listing are the requests clients repeat most: their statements are
compiled once (app/runner/compiled.py) and run on a raw pool connection, with no ORM and no
Connection object. The other reads are plain Core statements. Like app/runner/store.py, a read
that takes a `scope` sees only that owner's sessions (None: anyone's); another owner's session
is treated exactly as a missing one.
"""
import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Optional

from sqlalchemy import bindparam, func, select, tuple_
from sqlalchemy.engine import Engine

from app.models import STATUSES, Artifact, ReportSession, SessionCount, Step, User, iso
from app.runner.compiled import CompiledStatement

S = ReportSession.__table__
T = Step.__table__
A = Artifact.__table__
C = SessionCount.__table__

# Whether a user exists rides along with the status read: until one does, every poll would
# otherwise ask it separately. Plain integer and text columns: the driver's values need no conversion.
_USERS_EXIST = select(User.__table__.c.id).exists().label("users_exist")
_STATUS = select(S.c.version, S.c.status_document, S.c.owner, _USERS_EXIST).where(S.c.id == bindparam("id"))

_LISTED = (S.c.id, S.c.status, S.c.topic, S.c.owner, S.c.current_agent, S.c.created_at, S.c.updated_at)
_POSITION = tuple_(bindparam("after_created_at", type_=S.c.created_at.type), bindparam("after_id", type_=S.c.id.type))
_AFTER = tuple_(S.c.created_at, S.c.id) < _POSITION


def _page(by_status: bool, after: bool, by_owner: bool):
    """Newest first, keyset-paginated on (created_at, id): each shape walks one of the sessions' indexes."""
    query = select(*_LISTED)
    if by_status:
        query = query.where(S.c.status == bindparam("status"))
    if by_owner:
        query = query.where(S.c.owner == bindparam("owner"))
    if after:
        query = query.where(_AFTER)
    return query.order_by(S.c.created_at.desc(), S.c.id.desc()).limit(bindparam("limit"))


# From session_counts, kept by the store in the transaction of every change: nothing counts rows.
_ALL_COUNTS = select(C.c.status, func.sum(C.c.sessions).label("sessions")).group_by(C.c.status)
# Walks ix_sessions_status_updated to its first queued entry.
_OLDEST_QUEUED = select(func.min(S.c.updated_at)).where(S.c.status == "queued")
_OWNER_COUNTS = select(C.c.status, C.c.sessions).where(C.c.owner == bindparam("owner"))


class PolledStatus(NamedTuple):
    version: int        # bumped by every visible change: the ETag
    document: str       # the status document as stored (JSON text), rendered by the store
    owner: str
    users_exist: bool   # whether any user existed when it was read


class Page(NamedTuple):
    sessions: list[dict[str, Any]]  # as GET /api/sessions lists them (SessionSummarySchema)
    total: int                      # sessions matching the filter, on every page
    next_after: Optional[tuple[datetime, str]]  # (created_at, id) to continue after; None: the last page


@dataclass(frozen=True)
class SessionOverview:
    """What the pages and the report views need of a session besides its documents."""
    id: str
    status: str
    topic: str
    owner: str
    current_agent: Optional[str]


class Reads:
    def __init__(self, engine: Engine):
        self.engine = engine
        dialect = engine.dialect
        self._status = CompiledStatement(_STATUS, dialect)
        self._pages = {shape: CompiledStatement(_page(*shape), dialect)
                       for shape in itertools.product((False, True), repeat=3)}
        self._all_counts = CompiledStatement(_ALL_COUNTS, dialect)
        self._owner_counts = CompiledStatement(_OWNER_COUNTS, dialect)

    def status(self, session_id: str) -> Optional[PolledStatus]:
        """The stored status document of a session, by primary key: the hottest read there is.

        It takes no scope: the status fast path may learn who is calling only from this read
        (whether a user exists), so the caller decides with the owner it returns.
        """
        rows = self._status.read(self.engine, {"id": session_id})
        return PolledStatus(rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    def page(self, limit: int, status: Optional[str] = None, after: Optional[tuple[datetime, str]] = None,
             owner: Optional[str] = None, scope: Optional[str] = None) -> Page:
        """Up to `limit` sessions, newest first, after the position `after` (of `owner` and in `status`, if given)."""
        if scope is not None:
            if owner is not None and owner != scope:
                return Page([], 0, None)
            owner = scope
        params = {"limit": limit + 1, "status": status, "owner": owner}
        if after is not None:
            params |= {"after_created_at": after[0], "after_id": after[1]}
        query = self._pages[(status is not None, after is not None, owner is not None)]
        rows = query.read(self.engine, params)
        more = len(rows) > limit
        rows = [query.mapping(row) for row in rows[:limit]]
        sessions = [{"session_id": r["id"], "status": r["status"], "topic": r["topic"], "owner": r["owner"] or None,
                     "current_agent": r["current_agent"], "started_at": iso(r["created_at"]),
                     "updated_at": iso(r["updated_at"])} for r in rows]
        counts = self.counts(owner)
        return Page(sessions, counts[status] if status else sum(counts.values()),
                    (rows[-1]["created_at"], rows[-1]["id"]) if more else None)

    def counts(self, owner: Optional[str] = None) -> dict[str, int]:
        """Sessions by status, of one owner or of everyone (every status, 0 for none)."""
        if owner is None:
            found = dict(self._all_counts.read(self.engine, {}))
        else:
            found = dict(self._owner_counts.read(self.engine, {"owner": owner}))
        return {status: int(found.get(status) or 0) for status in STATUSES}

    def oldest_queued_at(self) -> Optional[datetime]:
        """When the session that has waited longest to start was queued (submitted or retried); None if none waits.

        A queued session changes no more until it starts, so its updated_at is when it was queued.
        """
        with self.engine.connect() as conn:
            return conn.execute(_OLDEST_QUEUED).scalar()

    def session(self, session_id: str, scope: Optional[str] = None) -> Optional[SessionOverview]:
        query = select(S.c.id, S.c.status, S.c.topic, S.c.owner, S.c.current_agent).where(S.c.id == session_id)
        if scope is not None:
            query = query.where(S.c.owner == scope)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return SessionOverview(*row) if row is not None else None

    def report(self, session_id: str) -> Optional[dict[str, Any]]:
        """The report: the output of the session's last recorded step, with the session id; None if none is stored.

        An output that is not an object (a custom pipeline's) comes as {"report": output}.
        """
        query = (select(T.c.output).where(T.c.session_id == session_id)
                 .order_by(T.c.position.desc(), T.c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            found = conn.execute(query).first()
        if found is None:
            return None
        output = found[0]
        return {"session_id": session_id} | (output if isinstance(output, dict) else {"report": output})

    def artifact(self, session_id: str, name: str) -> Optional[tuple[str, bytes]]:
        """(content type, data) of a file a step stored, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(select(A.c.content_type, A.c.data)
                                 .where(A.c.session_id == session_id, A.c.name == name)).first()
        return (found[0], found[1]) if found else None

    def lease_owners(self) -> list[str]:
        """Every process that holds a lease now (the runner checks which of them are provably dead)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(S.c.lease_owner).where(S.c.lease_owner.is_not(None)).distinct())
                        .scalars())
