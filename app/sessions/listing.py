"""GET /api/sessions: a keyset-paginated page of sessions, newest first, optionally by status and owner.

The page is read with statements compiled once (app/runner/compiled.py) and returned as plain
dicts: building the query per request, the ORM and a marshmallow dump cost several times the
indexed read itself (the schemas still describe the response in the OpenAPI document).
ListingFastPath answers well-formed requests before Flask dispatches, as the status poll is
answered; anything else (a bad parameter, another method) goes to the Flask view, which
validates it with the schema and answers with the same document or the error. A caller who is
not an admin lists only their own sessions (Caller.scope).
"""
import itertools
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Optional
from urllib.parse import parse_qsl

from sqlalchemy import bindparam, select, tuple_
from sqlalchemy.engine import Engine

from app.accounts.auth import Caller, caller_from_environ
from app.accounts.users import Users
from app.models import NAME_PATTERN, ReportSession, iso
from app.runner.compiled import CompiledStatement

S = ReportSession.__table__
_COLUMNS = (S.c.id, S.c.status, S.c.topic, S.c.owner, S.c.current_agent, S.c.created_at, S.c.updated_at)
_CURSOR = tuple_(bindparam("cursor_created_at", type_=S.c.created_at.type), bindparam("cursor_id", type_=S.c.id.type))
_AFTER = tuple_(S.c.created_at, S.c.id) < _CURSOR


def _page(by_status: bool, after_cursor: bool, by_owner: bool):
    query = select(*_COLUMNS)
    if by_status:
        query = query.where(S.c.status == bindparam("status"))
    if by_owner:
        query = query.where(S.c.owner == bindparam("owner"))
    if after_cursor:
        query = query.where(_AFTER)
    return query.order_by(S.c.created_at.desc(), S.c.id.desc()).limit(bindparam("limit"))


class SessionPages:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._queries = {shape: CompiledStatement(_page(*shape), engine.dialect)
                         for shape in itertools.product((False, True), repeat=3)}

    def page(self, limit: int, status: Optional[str] = None, cursor: Optional[tuple[datetime, str]] = None,
             owner: Optional[str] = None) -> tuple[list[dict], Optional[tuple[datetime, str]]]:
        """Up to `limit` sessions (of `owner`, if given) after the cursor, and the next page's cursor (None: last)."""
        params = {"limit": limit + 1, "status": status, "owner": owner}
        if cursor is not None:
            params |= {"cursor_created_at": cursor[0], "cursor_id": cursor[1]}
        query = self._queries[(status is not None, cursor is not None, owner is not None)]
        rows = [query.mapping(row) for row in query.read(self.engine, params)]
        more = len(rows) > limit
        rows = rows[:limit]
        sessions = [{"session_id": r["id"], "status": r["status"], "topic": r["topic"], "owner": r["owner"] or None,
                     "current_agent": r["current_agent"], "started_at": iso(r["created_at"]),
                     "updated_at": iso(r["updated_at"])} for r in rows]
        return sessions, ((rows[-1]["created_at"], rows[-1]["id"]) if more else None)


# "<created_at in microseconds since 1970>.<session id>": every string the pattern admits is a
# valid position (the keyset comparison needs no existing row), so the OpenAPI document can say
# exactly which cursors are accepted. Sixteen digits reach the year 2286.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[!-~]{1,64}$"
_CURSOR_FORMAT = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_cursor(created_at: datetime, session_id: str) -> str:
    return f"{(created_at - _EPOCH) // timedelta(microseconds=1)}.{session_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the last session of the previous page; ValueError if it is not a cursor."""
    if not _CURSOR_FORMAT.fullmatch(cursor):
        raise ValueError("not a cursor")
    micros, _, session_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), session_id


def listing_document(pages: SessionPages, store, caller: Caller, limit: int, status: Optional[str],
                     cursor: Optional[tuple[datetime, str]], owner: Optional[str] = None) -> dict:
    """The page `caller` asked for: their own sessions, or (admins, the open service) anyone's or `owner`'s."""
    if caller.scope is not None:
        if owner is not None and owner != caller.scope:  # someone else's sessions do not exist for them
            return {"total_sessions": 0, "sessions": [], "next_cursor": None}
        owner = caller.scope
    sessions, next_cursor = pages.page(limit, status, cursor, owner)
    counts = store.counts(owner)
    return {"total_sessions": counts[status] if status else sum(counts.values()), "sessions": sessions,
            "next_cursor": encode_cursor(*next_cursor) if next_cursor else None}


_LIMIT = re.compile(r"[1-9][0-9]{0,2}")
_OWNER = re.compile(NAME_PATTERN)


class ListingFastPath:
    """WSGI middleware: answers GET /api/sessions with valid parameters; everything else goes to Flask."""

    def __init__(self, wsgi_app, pages: SessionPages, store, users: Users, statuses, default_limit: int,
                 max_limit: int):
        self.wsgi_app = wsgi_app
        self.pages, self.store, self.users, self.statuses = pages, store, users, set(statuses)
        self.default_limit, self.max_limit = default_limit, max_limit

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/api/sessions" and environ.get("REQUEST_METHOD") == "GET":
            request = self._parse(environ.get("QUERY_STRING", ""))
            caller = caller_from_environ(self.users, environ) if request is not None else None
            if caller is not None:
                body = json.dumps(listing_document(self.pages, self.store, caller, *request)).encode()
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
        return self.wsgi_app(environ, start_response)

    def _parse(self, query: str):
        """(limit, status, cursor, owner) when every parameter is one the schema accepts, else None."""
        pairs = parse_qsl(query, keep_blank_values=True)
        args = dict(pairs)
        if len(args) != len(pairs) or set(args) - {"limit", "status", "cursor", "owner"}:
            return None
        owner = args.get("owner")
        if owner is not None and owner and not _OWNER.fullmatch(owner):
            return None
        limit = self.default_limit
        if "limit" in args:
            if not _LIMIT.fullmatch(args["limit"]) or int(args["limit"]) > self.max_limit:
                return None
            limit = int(args["limit"])
        status = args.get("status")
        if status is not None and status not in self.statuses:
            return None
        try:
            cursor = decode_cursor(args["cursor"]) if args.get("cursor") else None
        except ValueError:
            return None
        return limit, status, cursor, owner
