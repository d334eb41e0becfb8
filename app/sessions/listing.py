"""GET /api/sessions' query: a keyset-paginated page of sessions, newest first, optionally by status.

The page is read with statements compiled once (app/runner/compiled.py) and returned as plain
dicts: building the query per request, the ORM and a marshmallow dump cost several times the
indexed read itself (the schemas still describe the response in the OpenAPI document).
"""
from datetime import datetime
from typing import Optional

from sqlalchemy import bindparam, select, tuple_
from sqlalchemy.engine import Engine

from app.models import ReportSession, iso
from app.runner.compiled import CompiledStatement

S = ReportSession.__table__
_COLUMNS = (S.c.id, S.c.status, S.c.topic, S.c.current_agent, S.c.created_at, S.c.updated_at)
_CURSOR = tuple_(bindparam("cursor_created_at", type_=S.c.created_at.type), bindparam("cursor_id", type_=S.c.id.type))
_AFTER = tuple_(S.c.created_at, S.c.id) < _CURSOR


def _page(by_status: bool, after_cursor: bool):
    query = select(*_COLUMNS)
    if by_status:
        query = query.where(S.c.status == bindparam("status"))
    if after_cursor:
        query = query.where(_AFTER)
    return query.order_by(S.c.created_at.desc(), S.c.id.desc()).limit(bindparam("limit"))


class SessionPages:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._queries = {(by_status, after): CompiledStatement(_page(by_status, after), engine.dialect)
                         for by_status in (False, True) for after in (False, True)}

    def page(self, limit: int, status: Optional[str] = None,
             cursor: Optional[tuple[datetime, str]] = None) -> tuple[list[dict], Optional[tuple[datetime, str]]]:
        """Up to `limit` sessions after the cursor, and the cursor of the next page (None on the last)."""
        params = {"limit": limit + 1, "status": status}
        if cursor is not None:
            params |= {"cursor_created_at": cursor[0], "cursor_id": cursor[1]}
        with self.engine.connect() as conn:
            rows = self._queries[(status is not None, cursor is not None)].all(conn, params)
        more = len(rows) > limit
        rows = rows[:limit]
        sessions = [{"session_id": r["id"], "status": r["status"], "topic": r["topic"],
                     "current_agent": r["current_agent"], "started_at": iso(r["created_at"]),
                     "updated_at": iso(r["updated_at"])} for r in rows]
        return sessions, ((rows[-1]["created_at"], rows[-1]["id"]) if more else None)
