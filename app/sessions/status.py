"""The status poll, GET /api/report-status/<id>: one primary-key read of a stored document.

Every state change renders the session's status document and bumps its version in the same
transaction (app/runner/store.py), so answering a poll needs no joins and no serialisation:
read (version, document, owner), compare the version with If-None-Match, send 304 or the document.
StatusFastPath does that before Flask dispatches, for callers it can name without Flask (the open
service, a bearer token) and sessions they may see; the Flask view in routes.py answers the same
way through the framework, and handles every other case (cookies, unknown ids, other methods).
"""
from typing import Optional

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from app.accounts.auth import caller_from_environ
from app.accounts.users import Users
from app.models import ReportSession, User
from app.runner.compiled import CompiledStatement

PREFIX = "/api/report-status/"


class StatusReader:
    """Reads (version, document, owner, any user exists?) by primary key: this is the hottest query there is.

    Whether a user exists rides along: until one does, every poll would otherwise ask it separately.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        S = ReportSession.__table__
        # Plain integer and text columns: the driver's values need no conversion.
        users = select(User.__table__.c.id).exists().label("users_exist")
        self._read = CompiledStatement(select(S.c.version, S.c.status_document, S.c.owner, users)
                                       .where(S.c.id == bindparam("id")), engine.dialect)

    def __call__(self, session_id: str) -> Optional[tuple[int, str, str, bool]]:
        rows = self._read.read(self.engine, {"id": session_id})
        return (rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None


def etag_for(version: int) -> str:
    return f'"{version}"'


def etag_matches(if_none_match: Optional[str], etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag == etag or tag == "*" for tag in candidates)


class StatusFastPath:
    """WSGI middleware: answers status polls of existing sessions; everything else goes to Flask."""

    def __init__(self, wsgi_app, read_status: StatusReader, users: Users):
        self.wsgi_app = wsgi_app
        self.read_status = read_status
        self.users = users

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD")
        if path.startswith(PREFIX) and method in ("GET", "HEAD"):
            session_id = path[len(PREFIX):]
            readable = session_id and "/" not in session_id
            if self.users.known_to_exist:  # closed: only a bearer token is answered here
                caller = caller_from_environ(self.users, environ)
                found = self.read_status(session_id) if caller and readable else None
            else:  # perhaps open: the read says whether a user exists by now
                found = self.read_status(session_id) if readable else None
                caller = caller_from_environ(self.users, environ, users_exist=found[3]) if found else None
            if found is not None and caller is not None and caller.sees(found[2]):
                version, document, _owner, _ = found
                etag = etag_for(version)
                headers = [("ETag", etag), ("Cache-Control", "no-cache")]
                if etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
                    start_response("304 NOT MODIFIED", headers)
                    return []
                body = document.encode()
                headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                start_response("200 OK", headers)
                return [body] if method == "GET" else []
        return self.wsgi_app(environ, start_response)
