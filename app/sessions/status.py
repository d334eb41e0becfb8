"""The status poll, GET /api/report-status/<id>: StatusFastPath, and the ETag every answer to it carries.

Every state change renders the session's status document and bumps its version in the same
transaction (app/runner/store.py), so a poll needs no joins and no serialisation: one primary-key
read (Reads.status), the version compared with If-None-Match, then 304 or the document.
StatusFastPath does that before Flask dispatches, for callers it can name without Flask (the open
service, a bearer token) and sessions they may see; the Flask view in routes.py answers the same
way through the framework, and handles every other case (cookies, unknown ids, other methods).
"""
from typing import Optional

from app.accounts.auth import caller_from_environ
from app.accounts.users import Users
from app.runner.reads import Reads

PREFIX = "/api/report-status/"


def etag_for(version: int) -> str:
    return f'"{version}"'


def etag_matches(if_none_match: Optional[str], etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag == etag or tag == "*" for tag in candidates)


class StatusFastPath:
    """WSGI middleware: answers status polls of existing sessions; everything else goes to Flask."""

    def __init__(self, wsgi_app, reads: Reads, users: Users):
        self.wsgi_app = wsgi_app
        self.read_status = reads.status
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
                caller = caller_from_environ(self.users, environ, users_exist=found.users_exist) if found else None
            if found is not None and caller is not None and caller.sees(found.owner):
                etag = etag_for(found.version)
                headers = [("ETag", etag), ("Cache-Control", "no-cache")]
                if etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
                    start_response("304 NOT MODIFIED", headers)
                    return []
                body = found.document.encode()
                headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                start_response("200 OK", headers)
                return [body] if method == "GET" else []
        return self.wsgi_app(environ, start_response)
