"""Every write to execution state: submit, claim, step commit, heartbeat, release, cancel, retry.

The invariants, in one place:
- A process runs a session only while it holds the lease (`lease_owner`, `lease_expires_at`),
  taken by a conditional UPDATE inside a write transaction (BEGIN IMMEDIATE on SQLite; the row is
  locked FOR UPDATE elsewhere).
- A step's output row and the session's advance commit in one transaction, fenced on the lease
  owner: a process that lost its lease writes nothing, so a step is recorded exactly once.
- Every visible state change re-renders the session's status document and bumps `version`,
  in the same transaction; the status endpoint only ever reads those two columns.
- `attempts` counts resumes after a lost lease (a crash); past `max_attempts` the session fails.
- `session_counts` moves with every status change, insert and delete, in the same transaction,
  its rows always locked in one order (sorted by owner, then status).
- A submit or retry that would pass a quota writes nothing (QuotaExceeded): the counts it reads
  are those of its own write transaction.
- The claim serves owners in turns (round robin): recovered sessions first, then the oldest queued
  session of the owner in `queue_turns` whose last turn is oldest (never: first, by arrival);
  claiming it makes that owner's last turn now.
- `scope`, where an operation takes one, is the only owner whose sessions it may touch (None: any);
  another owner's session is treated exactly as a missing one.
"""
import enum
import functools
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator, Optional

from sqlalchemy import bindparam, delete, exists, func, insert, literal_column, or_, select, true, update
from sqlalchemy.engine import Connection, Engine

from app import metrics
from app.database import WRITE, database_now, insert_or_ignore, is_transient, upsert, write_transaction
from app.models import (ACTIVE, FINISHED, NO_OWNER, Artifact, QueueTurn, ReportSession, SessionCount, Step,
                        iso, utcnow)
from app.runner.compiled import CompiledStatement

log = logging.getLogger(__name__)

S = ReportSession.__table__
T = Step.__table__
A = Artifact.__table__
C = SessionCount.__table__
Q = QueueTurn.__table__

# The statements of the hot paths, built once: building a statement per call cost several times
# more than running it (a step commit went from ~850 us to a fraction of that).
# A session's state: every column but those only readers want (the document, its version, the topic).
_STATE = [column for column in S.c if column.key not in ("status_document", "topic", "version")]
# Leases and turns are timed by the database's clock, read with the row they apply to.
_NOW = database_now()
_STATE_NOW = [*_STATE, _NOW.label("db_now")]
_ROW = select(*_STATE_NOW).where(S.c.id == bindparam("session_id")).with_for_update()
_COMPLETED = select(T.c.name).where(T.c.session_id == bindparam("session_id")).order_by(T.c.position, T.c.id)
_MUTABLE = {"status", "current_agent", "progress_message", "status_fields", "error", "failed_step", "updated_at",
            "finished_at", "lease_owner", "lease_expires_at", "attempts", "cancel_requested"}


def _change_statement(columns: tuple[str, ...]):
    """A visible change that sets `columns`, the document and version + 1, fenced on the lease owner if given.

    Only the columns a change sets: SQLite rewrites the index entries of every column in the SET
    list, changed or not, and each page it touches is another page written to the WAL at commit.
    """
    return (update(S)
            .where(S.c.id == bindparam("session_id"),
                   or_(bindparam("fence", type_=S.c.lease_owner.type).is_(None), S.c.lease_owner == bindparam("fence")))
            .values(version=S.c.version + 1,
                    status_document=bindparam("new_status_document", type_=S.c.status_document.type),
                    **{c: bindparam(f"new_{c}", type_=S.c[c].type) for c in columns}))


def _count_statement(dialect):
    """Add `delta` to an (owner, status) count, making the row if it is the first: one statement, so two
    transactions that both make an owner's first row cannot both insert it (PostgreSQL would refuse one)."""
    insert_count = upsert(C, dialect).values(owner=bindparam("count_owner"), status=bindparam("count_status"),
                                             sessions=bindparam("delta"))
    return (insert_count.on_conflict_do_update(index_elements=[C.c.owner, C.c.status],
                                               set_={"sessions": C.c.sessions + insert_count.excluded.sessions})
            .returning(C.c.sessions))


_QUEUED_TOTAL = select(func.coalesce(func.sum(C.c.sessions), 0).label("sessions")).where(C.c.status == "queued")
_OWNER_ACTIVE = (select(func.coalesce(func.sum(C.c.sessions), 0).label("sessions"))
                 .where(C.c.owner == bindparam("owner"), or_(*(C.c.status == status for status in ACTIVE))))
# The oldest runnable session of each active status: queued, or generating but handed back or with
# an expired lease. One query per status, so each walks ix_sessions_status_newest in order and stops
# at the first match; a single `status IN (...)` query sorted every active row (3.5 ms at 5,000).
# LIMIT 1 is written into the SQL: SQLite runs these ~4 us slower with the limit as a parameter.
_RUNNABLE = [select(*_STATE_NOW)
             .where(S.c.status == status, or_(S.c.lease_owner.is_(None), S.c.lease_expires_at < _NOW))
             .order_by(S.c.created_at, S.c.id).limit(literal_column("1")) for status in ACTIVE]
_PEEK = [query.with_only_columns(S.c.id) for query in _RUNNABLE]
_TAKE_QUEUED, _TAKE_RESUMABLE = (query.with_for_update(skip_locked=True) for query in _RUNNABLE)
# Fair turns: the waiting owner whose last turn is oldest, then that owner's oldest queued session
# (queued sessions hold no lease). Each walks an index and stops at its first match: the waiting
# owners in turn order, then one owner's queue. The EXISTS only guards against a stale flag.
_NEXT_TURN = (select(Q.c.owner)
              .where(Q.c.waiting == true(), exists().where(S.c.status == "queued", S.c.owner == Q.c.owner))
              .order_by(Q.c.last_turn_at, Q.c.joined_at, Q.c.owner).limit(literal_column("1")))
_TAKE_TURN = (select(*_STATE_NOW).where(S.c.status == "queued", S.c.owner == bindparam("owner"))
              .order_by(S.c.created_at, S.c.id).limit(literal_column("1")).with_for_update(skip_locked=True))
_TURN_TAKEN = update(Q).where(Q.c.owner == bindparam("owner")).values(last_turn_at=_NOW)
_WAITING = update(Q).where(Q.c.owner == bindparam("owner")).values(waiting=bindparam("waiting"))
_STEPS = select(T.c.name, T.c.output).where(T.c.session_id == bindparam("session_id")).order_by(T.c.position, T.c.id)
_INSERT_STEP = insert(T)
_STEP_COLUMNS = ["session_id", "name", "position", "output", "started_at", "finished_at"]
_INSERT_ARTIFACT = insert(A)
# PostgreSQL: submits and retries queue one at a time (a transaction-scoped advisory lock), so two of
# them cannot both take the last place a quota leaves; SQLite's write lock already does that.
_QUOTA_LOCK = select(func.pg_advisory_xact_lock(literal_column("7142025")))
# PostgreSQL: the channel idle runners LISTEN on; a transaction that makes work NOTIFYs it at commit.
WAKE_CHANNEL = "report_sessions"
TRANSIENT_RETRIES = 5


def retried(method):
    """Run a store operation again when the database aborted its transaction in a race (a deadlock or a
    serialization failure on PostgreSQL): the rollback undid all of it, so running it again is safe."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or attempt == TRANSIENT_RETRIES - 1:
                    raise
                log.info("%s lost a race in the database (%s); running it again", method.__name__,
                         type(getattr(exc, "orig", None) or exc).__name__)
                time.sleep(random.uniform(0, 0.01 * 2 ** attempt))  # apart, so they do not collide again

    return run


# One encoder for every document: json.dumps with any option builds a new encoder per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class StepResult(enum.Enum):
    CONTINUE = "continue"    # recorded; run the next step
    COMPLETED = "completed"  # recorded; that was the last step
    CANCELLED = "cancelled"  # recorded; a cancel was waiting, the session stops here
    LOST = "lost"            # not recorded: this process no longer holds the lease


class Conflict(Exception):
    """The session is not in a state that allows the operation."""


class QuotaExceeded(Exception):
    """Queuing one more session would pass a limit (the message names it); `retry_after` suggests a wait (s)."""

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.retry_after = retry_after


def log_transition(old_status: Optional[str], row: dict[str, Any]) -> None:
    """One log line per committed status change of a session, with the fields a log collector filters on;
    and a count of the sessions that reached an end (reports_sessions_finished_total)."""
    sid, status = row["id"], row["status"]
    if old_status is None:
        detail = f"queued (submitted by {row['owner'] or 'anyone'})"
    else:
        detail = f"{old_status} -> {status}"
        if status == "generating":
            detail += f" (step {row['current_agent']}, attempt {row['attempts'] + 1})"
        elif status == "failed" and row.get("error"):
            detail += f": {row['error']}"
    if status in FINISHED:
        metrics.SESSIONS_FINISHED.labels(status).inc()
    log.info("session %s: %s", sid, detail,
             extra={"session_id": sid, "event": "transition", "from_status": old_status, "to_status": status,
                    "owner": row.get("owner") or None})


@dataclass
class Claim:
    """A lease on one session, as claim() took it; commit_step, progress and fail write through it."""
    session_id: str
    owner: str
    user_request: str
    requirements: dict[str, Any]
    outputs: dict[str, Any]  # recorded steps by name, in order: the claim's, then each commit_step's
    resumed: bool            # a previous run lost its lease mid-way


class Store:
    def __init__(self, engine: Engine, step_names: list[str], lease_seconds: float, max_attempts: int,
                 max_active_per_user: Optional[int] = None, max_queued: Optional[int] = None):
        self.engine = engine
        dialect = engine.dialect
        self._row = CompiledStatement(_ROW, dialect)
        self._completed_names = CompiledStatement(_COMPLETED, dialect)
        self._changes: dict[tuple[str, ...], CompiledStatement] = {}  # by the columns a change sets
        self._count_move = CompiledStatement(_count_statement(dialect), dialect)
        self._insert_step = CompiledStatement(_INSERT_STEP, dialect, column_keys=_STEP_COLUMNS)
        self._peek = [CompiledStatement(query, dialect) for query in _PEEK]
        self._take_queued = CompiledStatement(_TAKE_QUEUED, dialect)
        self._take_resumable = CompiledStatement(_TAKE_RESUMABLE, dialect)
        self._next_turn = CompiledStatement(_NEXT_TURN, dialect)
        self._take_turn = CompiledStatement(_TAKE_TURN, dialect)
        self._turn_taken = CompiledStatement(_TURN_TAKEN, dialect)
        self._waiting = CompiledStatement(_WAITING, dialect)
        self._steps = CompiledStatement(_STEPS, dialect)
        self._queued_total = CompiledStatement(_QUEUED_TOTAL, dialect)
        self._owner_active = CompiledStatement(_OWNER_ACTIVE, dialect)
        self.step_names = list(step_names)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_active_per_user = max_active_per_user
        self.max_queued = max_queued
        self._postgresql = dialect.name == "postgresql"
        self._pinned = threading.local()
        self._changed = threading.local()  # this thread's transaction's status changes, for the log
        self._found_work = False  # the last claim took a session: look no more before the next

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def pinned_connection(self) -> Iterator[None]:
        """Give this thread one connection for its write transactions until the block ends.

        For threads that run many small transactions (the runner's): checking a connection out of
        the pool for each, wrapping it and handing it back cost a quarter of a step commit.
        """
        if getattr(self._pinned, "conn", None) is not None:
            yield  # nested: the outer block owns it
            return
        with self.engine.connect() as conn:
            self._pinned.conn = conn.execution_options(**WRITE)
            try:
                yield
            finally:
                self._pinned.conn = None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite), on this thread's pinned connection if any.

        The status changes it made are logged once it has committed: a rolled-back or retried
        transaction logs nothing.
        """
        changes = self._changed.list = []
        conn = getattr(self._pinned, "conn", None)
        if conn is None:
            with write_transaction(self.engine) as conn:
                yield conn
        else:
            with conn.begin():
                yield conn
        for old_status, row in changes:
            log_transition(old_status, row)

    def _note(self, old_status: Optional[str], row) -> None:
        """Remember a status change of this transaction (to `row`'s status), to log it after the commit."""
        self._changed.list.append((old_status, dict(row)))

    # -- rendering -------------------------------------------------------------------------

    def render(self, row, completed: list[str]) -> str:
        """The status document for a session row and its finished step names (in order)."""
        done = sum(1 for name in self.step_names if name in completed)
        progress = 1.0 if row["status"] == "completed" else round(done / max(len(self.step_names), 1), 4)
        doc = {
            "session_id": row["id"],
            "status": row["status"],
            "user_request": row["user_request"],
            "report_requirements": row["requirements"],
            "current_agent": row["current_agent"],
            "message": row["progress_message"],
            "completed_tasks": completed,
            "progress": progress,
            "pipeline": self.step_names,
            "started_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"]),
            "finished_at": iso(row["finished_at"]),
            "error": row["error"],
            "failed_step": row["failed_step"],
            "cancel_requested": bool(row["cancel_requested"]),
            "attempts": row["attempts"],
            "report_url": f"/api/reports/{row['id']}" if row["status"] == "completed" else None,
        }
        for key, value in (row["status_fields"] or {}).items():
            doc.setdefault(key, value)  # a step adds fields; it cannot overwrite the session's own
        return _COMPACT_JSON.encode(doc)

    def _completed(self, conn: Connection, session_id: str) -> list[str]:
        return self._completed_names.scalars(conn, {"session_id": session_id})

    def _locked_row(self, conn: Connection, session_id: str):
        return self._row.first(conn, {"session_id": session_id})

    def _change(self, conn: Connection, row, completed: Optional[list[str]] = None, fence_owner=None, **values):
        """Apply a visible change to a locked row: new values, re-rendered document, version + 1.

        Returns False (and writes nothing) when `fence_owner` is given and no longer holds the lease.
        """
        values.setdefault("updated_at", utcnow())
        merged = dict(row) | values
        if completed is None:
            completed = self._completed(conn, row["id"])
        params = {f"new_{c}": value for c, value in values.items()}
        params |= {"session_id": row["id"], "fence": fence_owner, "new_status_document": self.render(merged, completed)}
        changed = self._change_row(tuple(sorted(values))).rowcount(conn, params) == 1
        if changed and merged["status"] != row["status"]:
            self._count(conn, {(row["owner"], row["status"]): -1, (row["owner"], merged["status"]): 1})
            self._note(row["status"], merged)
        return changed

    def _change_row(self, columns: tuple[str, ...]) -> CompiledStatement:
        statement = self._changes.get(columns)
        if statement is None:
            if not _MUTABLE.issuperset(columns):
                raise ValueError(f"not columns a change may set: {sorted(set(columns) - _MUTABLE)}")
            # A handful of shapes in all (one per kind of change); a race here only compiles one twice.
            statement = self._changes[columns] = CompiledStatement(_change_statement(columns), self.engine.dialect)
        return statement

    def _count(self, conn: Connection, deltas: dict[tuple[str, str], int]) -> None:
        """Move the (owner, status) counts, in sorted order: two transactions never wait on each other's rows.

        An owner whose queued count leaves or reaches zero starts or stops waiting for turns.
        """
        for (owner, status), delta in sorted(deltas.items()):
            if not delta:
                continue
            count = self._count_move.execute(conn, {"count_owner": owner, "count_status": status,
                                                    "delta": delta}).fetchone()[0]
            if status == "queued" and (count > 0) != (count - delta > 0):
                self._set_waiting(conn, owner, count > 0)

    def _set_waiting(self, conn: Connection, owner: str, waiting: bool) -> None:
        if waiting:  # an owner new to the queue comes before everyone who has had a turn
            conn.execute(insert_or_ignore(Q, conn.dialect)
                         .values(owner=owner, waiting=True, last_turn_at=0.0, joined_at=_NOW))
        self._waiting.execute(conn, {"owner": owner, "waiting": waiting})

    def _queue_in_turn(self, conn: Connection) -> None:
        """Take the submit lock (PostgreSQL) before reading the counts a quota check compares: only submits and
        retries raise the counts it checks, so with them in line the counts read are exact until commit."""
        if self._postgresql:
            conn.execute(_QUOTA_LOCK)

    def _announce_work(self, conn: Connection) -> None:
        """Wake idle runners everywhere once this transaction commits (PostgreSQL NOTIFY; SQLite: in-process only)."""
        if self._postgresql:
            conn.exec_driver_sql(f"NOTIFY {WAKE_CHANNEL}")

    def _check_quota(self, conn: Connection, owner: str) -> None:
        """Raise QuotaExceeded if one more queued session of `owner` would pass a limit (call _queue_in_turn first).

        "No one" (the service while it has no users) has no per-user limit: it is everyone.
        """
        if self.max_queued is not None and self._queued_total.first(conn, {})["sessions"] >= self.max_queued:
            raise QuotaExceeded(f"The queue is full: {self.max_queued} sessions are waiting to start, the most "
                                "REPORTS_MAX_QUEUED allows. Try again when some have started.", retry_after=60)
        if owner != NO_OWNER and self.max_active_per_user is not None:
            active = self._owner_active.first(conn, {"owner": owner})["sessions"]
            if active >= self.max_active_per_user:
                raise QuotaExceeded(f"You have {active} sessions queued or running, the most "
                                    f"REPORTS_MAX_ACTIVE_PER_USER allows. Submit again when one of them "
                                    "finishes (or cancel one).", retry_after=30)

    # -- web: submit, cancel, retry, delete --------------------------------------------------

    @retried
    def create(self, user_request: str, requirements: dict[str, Any], owner: str = NO_OWNER) -> str:
        """Queue a new session of `owner`; QuotaExceeded (and nothing written) past a limit."""
        session_id = str(uuid.uuid4())
        now = utcnow()
        row = dict(id=session_id, status="queued", user_request=user_request, requirements=requirements,
                   topic=requirements["topic"], owner=owner, current_agent=None, progress_message=None,
                   status_fields={}, error=None, failed_step=None,
                   created_at=now, updated_at=now, finished_at=None, lease_owner=None,
                   lease_expires_at=None, attempts=0, cancel_requested=False, version=1)
        with self._write() as conn:
            self._queue_in_turn(conn)
            self._check_quota(conn, owner)
            conn.execute(insert(S).values(status_document=self.render(row, []), **row))
            self._count(conn, {(owner, "queued"): 1})
            self._announce_work(conn)
            self._note(None, row)
        return session_id

    @retried
    def cancel(self, session_id: str, scope: Optional[str] = None) -> Optional[str]:
        """Cancel now if nobody is running the session, else at its next step boundary.

        Returns the new status (None if there is no such session); Conflict if it already finished.
        """
        with self._write() as conn:
            row = self._locked_row(conn, session_id)
            if row is None or (scope is not None and row["owner"] != scope):
                return None
            if row["status"] == "cancelled":
                return "cancelled"
            if row["status"] in FINISHED:
                raise Conflict(f"Session '{session_id}' is {row['status']}; there is nothing to cancel.")
            running = row["lease_owner"] is not None and row["lease_expires_at"] > row["db_now"]
            if running:
                self._change(conn, row, cancel_requested=True)
                return row["status"]
            self._change(conn, row, status="cancelled", finished_at=utcnow(), cancel_requested=False,
                         lease_owner=None, lease_expires_at=None)
            return "cancelled"

    @retried
    def retry(self, session_id: str, scope: Optional[str] = None) -> Optional[str]:
        """Send a failed or cancelled session back to the queue; it resumes at its first unfinished step.

        It counts against its owner's quota as a new submission would (QuotaExceeded).
        """
        with self._write() as conn:
            self._queue_in_turn(conn)
            row = self._locked_row(conn, session_id)
            if row is None or (scope is not None and row["owner"] != scope):
                return None
            if row["status"] not in ("failed", "cancelled"):
                raise Conflict(f"Session '{session_id}' is {row['status']}; only failed or cancelled "
                               "sessions can be retried.")
            self._check_quota(conn, row["owner"])
            self._change(conn, row, status="queued", error=None, failed_step=None, finished_at=None,
                         cancel_requested=False, attempts=0, lease_owner=None, lease_expires_at=None)
            self._announce_work(conn)
            return "queued"

    @retried
    def delete(self, session_id: str, scope: Optional[str] = None) -> bool:
        """Remove a session and its steps. A process still running it finds its lease gone and stops."""
        stmt = delete(S).where(S.c.id == session_id)
        if scope is not None:
            stmt = stmt.where(S.c.owner == scope)
        with self._write() as conn:
            gone = conn.execute(stmt.returning(S.c.owner, S.c.status)).first()
            if gone is not None:
                self._count(conn, {(gone.owner, gone.status): -1})
                self._note(gone.status, {"id": session_id, "status": "deleted", "owner": gone.owner})
            return gone is not None

    # -- runner: claim, commit, heartbeat, release --------------------------------------------

    @retried
    def claim(self, owner: str) -> Optional[Claim]:
        """Take a runnable session: one to resume (handed back, or its lease expired), else the next turn's."""
        while True:
            # Look before taking the write lock: an idle process asks every second, and most of the
            # time there is nothing to claim. While claims keep finding work, go straight to the take.
            if not self._found_work:
                with self.engine.connect() as conn:
                    if all(peek.first(conn, {}) is None for peek in self._peek):
                        return None
            with self._write() as conn:
                # Sessions already under way first: they had their turn when they started.
                row = self._take_resumable.first(conn, {}) or self._take_next_turn(conn)
                self._found_work = row is not None
                if row is None:
                    return None  # another process was quicker, or the queue ran dry
                steps = [(r["name"], r["output"]) for r in self._steps.all(conn, {"session_id": row["id"]})]
                completed = [name for name, _ in steps]
                resumed = row["lease_owner"] is not None  # its last owner died or stalled mid-run
                attempts = row["attempts"] + int(resumed)
                pending = [name for name in self.step_names if name not in completed]
                if attempts > self.max_attempts:
                    self._change(conn, row, completed, status="failed", attempts=attempts, finished_at=utcnow(),
                                 failed_step=row["current_agent"], lease_owner=None, lease_expires_at=None,
                                 error=(f"Gave up after {attempts - 1} interrupted runs: the process running "
                                        f"step '{row['current_agent']}' died or stalled each time "
                                        f"(limit REPORTS_MAX_ATTEMPTS={self.max_attempts})."))
                    continue
                if row["cancel_requested"] or not pending:
                    # Asked to cancel while nobody ran it, or every step is already recorded.
                    status = "cancelled" if row["cancel_requested"] else "completed"
                    self._change(conn, row, completed, status=status, current_agent=None, finished_at=utcnow(),
                                 cancel_requested=False, lease_owner=None, lease_expires_at=None)
                    continue
                self._change(conn, row, completed, status="generating", current_agent=pending[0],
                             attempts=attempts, lease_owner=owner, lease_expires_at=row["db_now"] + self.lease_seconds)
                if row["status"] == "queued":
                    self._turn_taken.execute(conn, {"owner": row["owner"]})
                return Claim(row["id"], owner, row["user_request"], row["requirements"],
                             {name: output for name, output in steps}, resumed)

    def _take_next_turn(self, conn: Connection):
        """The oldest queued session of the owner whose turn it is, locked; None if nothing is queued."""
        turn = self._next_turn.first(conn, {})
        row = self._take_turn.first(conn, {"owner": turn["owner"]}) if turn is not None else None
        # Queued sessions whose owner has no turn row (inserted by hand) still run, oldest first.
        return row or self._take_queued.first(conn, {})

    @retried
    def commit_step(self, claim: Claim, name: str, output: Any, started_at: datetime,
                    artifacts: Optional[dict[str, tuple[str, bytes]]] = None,
                    status_fields: Optional[dict[str, Any]] = None) -> StepResult:
        """Record a finished step (with its files) and advance the session: one transaction, fenced on the lease.

        The recorded steps are the claim's own list: while its owner holds the lease nobody else
        records one, so there is nothing to read back. On success the step joins `claim.outputs`.
        """
        session_id, owner = claim.session_id, claim.owner
        with self._write() as conn:
            row = self._locked_row(conn, session_id)
            if row is None or row["lease_owner"] != owner:
                return StepResult.LOST
            position = self.step_names.index(name)
            now = utcnow()
            self._insert_step.execute(conn, {"session_id": session_id, "name": name, "position": position,
                                             "output": output, "started_at": started_at, "finished_at": now})
            for artifact_name, (content_type, data) in (artifacts or {}).items():
                conn.execute(_INSERT_ARTIFACT, {"session_id": session_id, "step": name, "name": artifact_name,
                                                "content_type": content_type, "data": data, "created_at": now})
            completed = [*claim.outputs, name]
            pending = [n for n in self.step_names if n not in completed]
            if not pending:
                values = dict(status="completed", current_agent=None, finished_at=now, lease_owner=None,
                              lease_expires_at=None, cancel_requested=False)
                result = StepResult.COMPLETED
            elif row["cancel_requested"]:
                values = dict(status="cancelled", current_agent=None, finished_at=now, lease_owner=None,
                              lease_expires_at=None, cancel_requested=False)
                result = StepResult.CANCELLED
            else:
                values = dict(current_agent=pending[0], lease_expires_at=row["db_now"] + self.lease_seconds)
                result = StepResult.CONTINUE
            values["progress_message"] = None
            if status_fields:
                values["status_fields"] = dict(row["status_fields"] or {}) | status_fields
            if not self._change(conn, row, completed, fence_owner=owner, updated_at=now, **values):
                # Unreachable while the row is locked; if it ever happens, the raise rolls back the step row.
                raise RuntimeError(f"fenced update of session {session_id} matched no row")
        claim.outputs[name] = output
        return result

    @retried
    def progress(self, claim: Claim, message: str) -> bool:
        """Show the running step's latest progress message (if the claim still holds the session)."""
        with self._write() as conn:
            row = self._locked_row(conn, claim.session_id)
            if row is None or row["lease_owner"] != claim.owner or row["progress_message"] == message:
                return False
            return self._change(conn, row, list(claim.outputs), fence_owner=claim.owner, progress_message=message)

    @retried
    def fail(self, claim: Claim, step: str, error: str) -> bool:
        """An agent raised: the session fails with the step and the reason (if the claim still holds it)."""
        with self._write() as conn:
            row = self._locked_row(conn, claim.session_id)
            if row is None or row["lease_owner"] != claim.owner:
                return False
            return self._change(conn, row, list(claim.outputs), fence_owner=claim.owner, status="failed",
                                error=error, failed_step=step,
                                finished_at=utcnow(), lease_owner=None, lease_expires_at=None,
                                cancel_requested=False, progress_message=None)

    @retried
    def heartbeat(self, owner: str) -> int:
        """Extend every lease this process holds; returns how many it still holds."""
        with self._write() as conn:
            return conn.execute(update(S).where(S.c.lease_owner == owner, S.c.status == "generating")
                                .values(lease_expires_at=_NOW + self.lease_seconds)).rowcount

    @retried
    def release(self, owner: str, session_id: Optional[str] = None) -> int:
        """Hand leases back (all of this process's, or one session's) so another process resumes at once."""
        stmt = update(S).where(S.c.lease_owner == owner)
        if session_id is not None:
            stmt = stmt.where(S.c.id == session_id)
        with self._write() as conn:
            released = conn.execute(stmt.values(lease_owner=None, lease_expires_at=None)).rowcount
            if released:
                self._announce_work(conn)
            return released

    @retried
    def expire_leases_of(self, owner: str) -> int:
        """Mark a dead process's leases expired, so the next claim resumes its sessions now."""
        with self._write() as conn:
            expired = conn.execute(update(S).where(S.c.lease_owner == owner, S.c.lease_expires_at > 0)
                                   .values(lease_expires_at=0)).rowcount
            if expired:
                self._announce_work(conn)
            return expired

    # -- operators: cleanup and import -------------------------------------------------------

    def cleanup(self, days: float, dry_run: bool = False, batch_size: int = 500) -> int:
        """Delete finished sessions last updated more than `days` ago, in batches; returns the count."""
        cutoff = utcnow() - timedelta(days=days)
        old = (S.c.status.in_(FINISHED), S.c.updated_at <= cutoff)
        if dry_run:
            with self.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(S).where(*old)).scalar_one()
        removed = 0
        while True:
            batch, found = self._remove_old(old, batch_size)
            removed += batch
            if found < batch_size:
                return removed

    @retried
    def _remove_old(self, old, batch_size: int) -> tuple[int, int]:
        """One batch of cleanup in one transaction: (sessions removed, old sessions found)."""
        with self._write() as conn:
            ids = conn.execute(select(S.c.id).where(*old).limit(batch_size).with_for_update(skip_locked=True)
                               ).scalars().all()
            if not ids:
                return 0, 0
            # By id alone: the rows are locked (or the write lock held) since the select, and adding
            # the age condition made SQLite walk the whole status index for every batch.
            rows = conn.execute(delete(S).where(S.c.id.in_(ids)).returning(S.c.owner, S.c.status)).all()
            gone = Counter((row.owner, row.status) for row in rows)
            self._count(conn, {key: -n for key, n in gone.items()})
            return sum(gone.values()), len(ids)

    @retried
    def import_sessions(self, sessions: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Insert sessions unless their id exists, in one transaction; returns (imported, skipped) ids.

        Each session is a row's values plus `completed_tasks`, which only its status document keeps:
        the old store saved no step outputs, so there are no step rows to resume from.
        """
        imported, skipped = [], []
        with self._write() as conn:
            existing = set(conn.execute(select(S.c.id).where(S.c.id.in_([s["id"] for s in sessions]))).scalars())
            for session in sessions:
                if session["id"] in existing:
                    skipped.append(session["id"])
                    continue
                row = {k: v for k, v in session.items() if k != "completed_tasks"}
                row |= dict(owner=NO_OWNER, lease_owner=None, lease_expires_at=None, attempts=0, cancel_requested=False,
                            version=1, progress_message=None, status_fields={})
                conn.execute(insert(S).values(status_document=self.render(row, session["completed_tasks"]), **row))
                self._count(conn, {(NO_OWNER, row["status"]): 1})
                imported.append(row["id"])
                existing.add(row["id"])
        return imported, skipped
