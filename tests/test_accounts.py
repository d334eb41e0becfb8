"""Accounts, as users and operators meet them: the service is open until `flask users create`, then
every request names its caller (a bearer token, or the pages' sign-in cookie with a CSRF token on
writes); a session that is not yours answers exactly as a missing one; quotas refuse with 429; the
runner serves owners in turns; and the service refuses to start open to the network.

Requests go through the Flask test client (and, where the status and listing fast paths could answer
differently, also through the Flask views alone); commands through Flask's CLI runner; the fair
turns straight through the Store, as the runner would call it (the `app` fixture starts no runner).
"""
import hashlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from typing import Optional
from unittest.mock import ANY
from urllib.parse import parse_qs, urlsplit

import flask_migrate
import pytest
from conftest import SUBMISSION
from flask import request
from flask.testing import FlaskClient
from servers import BIN, PROJECT, free_port, query, server_env, wait_until
from servers import request as http

from agents import FAST
from app import create_app
from app.extensions import db
from app.models import NO_OWNER, utcnow
from app.operations import OperationsEndpoints
from app.runner.store import StepResult
from app.security import ResponseGuard
from app.sessions.listing import ListingFastPath
from app.sessions.status import StatusFastPath
from app.startup import ConfigError, check_not_open, is_loopback

SUBMIT = "/api/submit-requirements"
MISSING = "00000000-0000-4000-8000-000000000000"
PASSWORD = "a long enough passphrase"


# -- helpers ---------------------------------------------------------------------------------------

def body(topic="Electric Vehicle Market Analysis"):
    return {"user_request": SUBMISSION["user_request"], "requirements": dict(SUBMISSION["requirements"], topic=topic)}


def users(cli, *args, input=None):
    """`flask users ARGS...` through the CLI runner (its standard input is never a terminal)."""
    return cli.invoke(args=["users", *args], input=input)


def token_in(output: str) -> str:
    found = re.search(r"^token: (\S+)$", output, re.M)
    assert found, output
    return found.group(1)


def create_user(cli, name, *flags, password=None) -> str:
    """Create a user (with a password for the pages if given); returns the API token it printed."""
    args = [name, *flags] + (["--password-stdin"] if password is not None else [])
    result = users(cli, "create", *args, input=f"{password}\n" if password is not None else None)
    assert result.exit_code == 0, result.output + result.stderr
    return token_in(result.output)


def refused(result, message: str) -> None:
    """The command failed through click (non-zero, no traceback) and said `message`."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr


@dataclass
class Api:
    """An API client: the test client, sending `token` as a bearer token when there is one."""
    client: object
    token: Optional[str] = None

    def open(self, method, path, headers=None, **kwargs):
        headers = dict(headers or {})
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def get(self, path, **kwargs):
        return self.open("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.open("POST", path, **kwargs)

    def delete(self, path, **kwargs):
        return self.open("DELETE", path, **kwargs)

    def submit(self, topic="Electric Vehicle Market Analysis") -> str:
        response = self.post(SUBMIT, json=body(topic))
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.get_json()["session_id"]

    def status(self, session_id) -> dict:
        response = self.get(f"/api/report-status/{session_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def listing(self, query="") -> dict:
        response = self.get(f"/api/sessions{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def ids(self, query="") -> set[str]:
        return {s["session_id"] for s in self.listing(query)["sessions"]}


def session_rows(database) -> int:
    return database.query("SELECT count(*) FROM sessions")[0][0]


def assert_unauthorized(response, invalid: bool, what: str = "") -> None:
    """401 JSON with a detail, and a Bearer challenge (error="invalid_token" when a token was sent)."""
    assert response.status_code == 401, f"{what}: {response.get_data(as_text=True)}"
    assert response.is_json and response.get_json()["detail"], what
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="report-service"'), what
    assert ('error="invalid_token"' in challenge) is invalid, f"{what}: {challenge}"


REPORT_FILES = {
    "report.md": ("text/markdown; charset=utf-8", b"# Alice's report\n"),
    "report.html": ("text/html; charset=utf-8", b"<h1>Alice's report</h1>"),
    "report.pdf": ("application/pdf", b"%PDF-1.4 Alice's report"),
    "figure-1.png": ("image/png", b"\x89PNG Alice's chart"),
    "figure-1.svg": ("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
}


def complete(store, session_id) -> None:
    """Run a queued session to `completed` through the store, as the runner would, with report files and a chart."""
    claim = store.claim("test-worker")
    assert claim is not None and claim.session_id == session_id, "another session was first in the queue"
    *steps, last = store.step_names
    for name in steps:
        assert store.commit_step(claim, name, {"step": name}, utcnow()) is StepResult.CONTINUE
    report = {"title": "Alice's report", "markdown": "# Alice's report\n",
              "files": {"md": "report.md", "html": "report.html", "pdf": "report.pdf"},
              "charts": [{"png": "figure-1.png", "svg": "figure-1.svg", "title": "Sales"}]}
    assert store.commit_step(claim, last, report, utcnow(), artifacts=REPORT_FILES) is StepResult.COMPLETED


def csrf_field(html: str) -> str:
    found = re.search(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def meta_csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found, html
    return found.group(1)


def sign_in(client, name="alice", password=PASSWORD, next=None, with_csrf=True, headers=None, **kwargs):
    """Fill in and send the sign-in form as a browser would (kwargs: base_url for https)."""
    page = client.get("/sign-in", **kwargs)
    form = {"name": name, "password": password}
    if with_csrf:
        form["csrf_token"] = csrf_field(page.get_data(as_text=True))
    if next is not None:
        form["next"] = next
    return client.post("/sign-in", data=form, headers=headers or {}, **kwargs)


def sign_in_cookie(response) -> set[str]:
    """The attributes of the report_session cookie the response sets, lower-cased (`name=value` dropped)."""
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("report_session=")]
    return {part.strip().lower() for part in cookie.split(";")[1:]}


class Browser(FlaskClient):
    """A test client whose every request has an app context (and `g`) of its own, as in a server.

    pytest-flask keeps one request context pushed for the whole test, and Flask would run every
    request of the test client inside its app context: Flask-Login's user and Flask-WTF's CSRF
    token, cached in `g`, would then outlive a sign-out or a revocation, which no server does.
    """

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def client(app):
    app.test_client_class = Browser
    return app.test_client()


@pytest.fixture
def app_with(database, monkeypatch):
    """make(KEY=value, ...): an app on the test's database with REPORTS_KEY set in its environment."""
    made = []

    def make(**settings):
        for key, value in settings.items():
            monkeypatch.setenv(f"REPORTS_{key}", str(value))
        made.append(create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database.url}))
        made[-1].test_client_class = Browser
        return made[-1]

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture(params=["fast path", "flask view"])
def answered_by(request, app, monkeypatch):
    """Run the test twice: as deployed, and with the status and listing fast paths taken out, so the
    Flask views answer every request the fast paths would have answered (they must answer alike)."""
    guard = app.wsgi_app
    assert isinstance(guard, ResponseGuard) and isinstance(guard.wsgi_app, OperationsEndpoints)
    outer = guard.wsgi_app  # the fast paths come next, then Flask
    assert isinstance(outer.wsgi_app, ListingFastPath) and isinstance(outer.wsgi_app.wsgi_app, StatusFastPath)
    if request.param == "flask view":
        monkeypatch.setattr(outer, "wsgi_app", outer.wsgi_app.wsgi_app.wsgi_app)
    return request.param


@pytest.fixture
def flask_saw(app):
    """The paths of the requests that reached Flask (not answered by a fast path), in order."""
    seen = []
    app.before_request_funcs.setdefault(None, []).insert(0, lambda: seen.append(request.path))
    return seen


# -- 1. open until the first user -------------------------------------------------------------------

def test_without_users_everything_works_without_a_token(client):
    """A fresh install behaves as before accounts: no token, no sign-in."""
    anyone = Api(client)
    session_id = anyone.submit()

    assert anyone.status(session_id)["status"] == "queued"
    assert anyone.ids() == {session_id}
    assert anyone.post(f"/api/sessions/{session_id}/cancel").status_code == 200
    assert client.get("/").status_code == 200 and client.get("/sessions").status_code == 200


def test_the_first_user_closes_the_api_at_once_without_a_restart(app, client, cli, database):
    """Right after `users create`, the same running app answers 401 to anyone without a valid token."""
    session_id = Api(client).submit()
    token = create_user(cli, "alice")
    requests = {"listing": ("GET", "/api/sessions", None),
                "status poll": ("GET", f"/api/report-status/{session_id}", None),
                "status poll of an unknown session": ("GET", f"/api/report-status/{MISSING}", None),
                "submit": ("POST", SUBMIT, body())}

    callers = {"no token": (Api(client), False), "a made-up token": (Api(client, "not-a-token"), True),
               "alice's token with one more character": (Api(client, token + "x"), True)}
    for what, (method, path, payload) in requests.items():
        for who, (caller, invalid) in callers.items():
            assert_unauthorized(caller.open(method, path, json=payload), invalid, f"{what}, {who}")
    assert session_rows(database) == 1  # the refused submits stored nothing

    alice = Api(client, token)
    assert alice.submit() and alice.listing()["total_sessions"] == 1


def test_a_valid_token_is_answered_by_the_fast_path_and_the_flask_view_too(app, client, cli, flask_saw, monkeypatch):
    """A poll with a valid token never reaches Flask; Flask's own answer (as for a cookie) is the same."""
    alice = Api(client, create_user(cli, "alice"))
    session_id = alice.submit()
    flask_saw.clear()

    fast = alice.get(f"/api/report-status/{session_id}")
    not_modified = alice.get(f"/api/report-status/{session_id}", headers={"If-None-Match": fast.headers["ETag"]})
    assert flask_saw == []
    refused_poll = Api(client).get(f"/api/report-status/{session_id}")
    assert flask_saw == [f"/api/report-status/{session_id}"]  # no token: Flask decides, and says 401
    assert_unauthorized(refused_poll, invalid=False)

    outer = app.wsgi_app.wsgi_app  # ResponseGuard, OperationsEndpoints, then the fast paths
    monkeypatch.setattr(outer, "wsgi_app", outer.wsgi_app.wsgi_app.wsgi_app)  # Flask only
    slow = alice.get(f"/api/report-status/{session_id}")
    slow_not_modified = alice.get(f"/api/report-status/{session_id}", headers={"If-None-Match": fast.headers["ETag"]})

    assert fast.status_code == slow.status_code == 200
    assert fast.get_json() == slow.get_json() and fast.get_json()["session_id"] == session_id
    assert fast.headers["ETag"] == slow.headers["ETag"]
    assert not_modified.status_code == slow_not_modified.status_code == 304


def test_a_revoked_token_is_refused_and_revoking_everyone_never_reopens_the_service(client, cli, app_with):
    """A revoked user's token stops at once; with no active user left the service stays closed, restarted too."""
    alice_token = create_user(cli, "alice")
    alice = Api(client, alice_token)
    session_id = alice.submit()

    assert users(cli, "revoke", "alice").exit_code == 0

    assert_unauthorized(alice.get("/api/sessions"), invalid=True)
    assert_unauthorized(alice.get(f"/api/report-status/{session_id}"), invalid=True)
    assert_unauthorized(alice.post(SUBMIT, json=body()), invalid=True)
    # The only user is revoked: the service stays closed, it does not fall back to open.
    assert_unauthorized(Api(client).get("/api/sessions"), invalid=False)
    assert_unauthorized(Api(client).post(SUBMIT, json=body()), invalid=False)
    assert client.get("/sessions").status_code == 302
    restarted = app_with().test_client()
    assert_unauthorized(restarted.get("/api/sessions"), invalid=False)
    assert_unauthorized(restarted.get(f"/api/report-status/{session_id}"), invalid=False)


def test_a_new_token_works_and_the_old_one_stops(client, cli):
    """`users token NAME` replaces a leaked token: the new one works, the old one is refused."""
    old = create_user(cli, "alice")
    session_id = Api(client, old).submit()

    result = users(cli, "token", "alice")

    assert result.exit_code == 0, result.output + result.stderr
    new = token_in(result.output)
    assert new != old and len(new) >= 16
    assert Api(client, new).status(session_id)["session_id"] == session_id
    assert_unauthorized(Api(client, old).get(f"/api/report-status/{session_id}"), invalid=True)


def test_a_new_token_lets_a_revoked_user_back_in(client, cli):
    """An operator lets a revoked user back in by issuing a new token."""
    create_user(cli, "alice")
    users(cli, "revoke", "alice")

    token = token_in(users(cli, "token", "alice").output)

    assert Api(client, token).listing()["total_sessions"] == 0


@pytest.mark.parametrize("path, next_target", [("/", "/"), ("/sessions", "/sessions"),
                                               ("/sessions?status=failed", "/sessions?status=failed"),
                                               (f"/sessions/{MISSING}", f"/sessions/{MISSING}")])
def test_pages_send_a_visitor_to_sign_in_and_back(client, cli, path, next_target):
    """A page asked for before signing in is the page shown after it."""
    create_user(cli, "alice", password=PASSWORD)

    response = client.get(path)

    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/sign-in" and parse_qs(location.query) == {"next": [next_target]}
    signed_in = sign_in(client, next=parse_qs(location.query)["next"][0])
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == next_target


def test_the_sign_in_page_the_api_description_and_the_stylesheet_need_no_sign_in(client, cli):
    """A visitor can still reach the sign-in page (and its stylesheet) and read the API's description."""
    create_user(cli, "alice")

    assert client.get("/sign-in").status_code == 200
    spec = client.get("/api/openapi.json").get_json()
    assert spec["info"]["title"] == "Report service"
    # It tells clients how to authenticate: a bearer token, or nothing while the service is open.
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": ANY}
    assert spec["security"] == [{"bearer": []}, {}]
    css = client.get("/assets/app.css")
    assert css.status_code == 200 and css.content_type.startswith("text/css")


# -- 2. the `flask users` commands -----------------------------------------------------------------

def test_users_create_prints_a_token_and_stores_only_its_hash(cli, database):
    """The token is shown once; the database holds only its SHA-256."""
    result = users(cli, "create", "alice")

    assert result.exit_code == 0, result.stderr
    token = token_in(result.output)
    assert len(token) >= 16
    [(name, is_admin, stored, password_hash)] = database.query(
        "SELECT name, is_admin, token_hash, password_hash FROM users")
    assert (name, is_admin, password_hash) == ("alice", 0, None)
    assert stored != token and stored == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(database.query("SELECT * FROM users"))


def test_users_create_admin_makes_an_admin(cli, database):
    """`--admin` makes an admin."""
    create_user(cli, "root", "--admin")

    assert database.query("SELECT name, is_admin FROM users") == [("root", 1)]


def test_a_duplicate_name_is_refused(cli, database):
    """A second user of the same name is refused, and the first keeps their token."""
    first = create_user(cli, "alice")

    refused(users(cli, "create", "alice"), "A user named 'alice' exists already.")
    assert database.query("SELECT token_hash FROM users") == [(hashlib.sha256(first.encode()).hexdigest(),)]


@pytest.mark.parametrize("name", ["-alice", ".alice", "al ice", "alice/bob", "ålice", "a" * 65, "alice\n"])
def test_a_bad_name_is_refused(cli, database, name):
    """A name the service could not use is refused with the rule, and nothing is created."""
    refused(users(cli, "create", "--", name), "A user name is 1 to 64 letters")
    assert database.query("SELECT count(*) FROM users") == [(0,)]


def test_the_password_is_read_from_standard_input(app, cli, database):
    """`--password-stdin` takes the password from a pipe; only its hash is stored."""
    create_user(cli, "alice", password=PASSWORD)

    accounts = app.extensions["report_users"]
    assert accounts.check_sign_in("alice", PASSWORD) is not None
    assert accounts.check_sign_in("alice", PASSWORD + "x") is None
    [(stored,)] = database.query("SELECT password_hash FROM users")
    assert PASSWORD not in stored


def test_a_short_password_is_refused_and_no_user_is_made(cli, database):
    """A password under 12 characters is refused, and no half-made user is left."""
    refused(users(cli, "create", "alice", "--password-stdin", input="elevenchars\n"), "12 to 1024 characters")
    assert database.query("SELECT count(*) FROM users") == [(0,)]


def test_without_password_stdin_and_without_a_terminal_nothing_is_asked(app, cli):
    """Scripts and CI never hang on a prompt: the user gets an API token and no password."""
    result = users(cli, "create", "alice")

    assert result.exit_code == 0
    assert "Password" not in result.output + result.stderr
    assert "has no password for the pages" in result.output
    assert app.extensions["report_users"].get("alice").has_password is False


def test_users_password_without_a_terminal_says_to_use_password_stdin(cli):
    """`users password` with no terminal fails and says how to pass one."""
    create_user(cli, "alice")

    refused(users(cli, "password", "alice"), "--password-stdin")


def test_users_list_shows_names_roles_and_revocations(cli):
    """An operator sees who exists, who is an admin, who has a password and who is revoked."""
    create_user(cli, "root", "--admin")
    create_user(cli, "alice", password=PASSWORD)
    create_user(cli, "bob")
    users(cli, "revoke", "bob")

    result = users(cli, "list")

    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert lines["3"] == "3 users."
    assert lines["alice"].split()[1:3] == ["user", "active"] and "password yes" in lines["alice"]
    assert lines["root"].split()[1:3] == ["admin", "active"] and "password no" in lines["root"]
    assert lines["bob"].split()[1:3] == ["user", "revoked"] and "token no" in lines["bob"]


@pytest.mark.parametrize("command", [["revoke", "nobody"], ["token", "nobody"]])
def test_commands_on_an_unknown_user_fail(cli, command):
    """A typo in a user name fails loudly instead of doing nothing."""
    create_user(cli, "alice")

    refused(users(cli, *command), "There is no user named 'nobody'.")


def test_users_password_on_an_unknown_user_fails(cli):
    """Setting the password of a user who does not exist fails."""
    refused(users(cli, "password", "nobody", "--password-stdin", input=PASSWORD + "\n"),
            "There is no user named 'nobody'.")


def test_users_password_sets_a_password_and_ends_page_sign_ins(app, client, cli):
    """A new password signs the user out of every browser; only the new password signs in."""
    create_user(cli, "alice", password=PASSWORD)
    assert sign_in(client).status_code == 302
    assert client.get("/api/sessions").status_code == 200
    refused(users(cli, "password", "alice", "--password-stdin", input="too short\n"), "12 to 1024 characters")
    assert client.get("/api/sessions").status_code == 200  # a refused change ends nothing

    result = users(cli, "password", "alice", "--password-stdin", input="another long passphrase\n")

    assert result.exit_code == 0, result.stderr
    assert_unauthorized(client.get("/api/sessions"), invalid=False)
    assert sign_in(client, password=PASSWORD).status_code == 200  # the old password: the form again
    assert sign_in(client, password="another long passphrase").status_code == 302
    assert client.get("/api/sessions").status_code == 200


# -- 3. ownership: another user's session does not exist for you ----------------------------------

@dataclass
class World:
    alice: Api
    bob: Api
    root: Api  # an admin
    old: str        # submitted while the service was open, then cancelled: no one's
    report: str     # alice's, completed, with report files and a chart
    queued: str     # alice's
    cancelled: str  # alice's
    bobs: str       # bob's, queued


@pytest.fixture
def world(app, client, cli, store):
    """Alice's sessions in every state bob could try something on, bob's own, and one from before accounts."""
    anyone = Api(client)
    old = anyone.submit("Before accounts")
    assert anyone.post(f"/api/sessions/{old}/cancel").status_code == 200  # so the claim below takes alice's
    alice, bob, root = (Api(client, create_user(cli, name, *flags))
                        for name, flags in (("alice", ()), ("bob", ()), ("root", ("--admin",))))
    report = alice.submit("Alice report")
    complete(store, report)
    queued = alice.submit("Alice queued")
    cancelled = alice.submit("Alice cancelled")
    assert alice.post(f"/api/sessions/{cancelled}/cancel").status_code == 200
    return World(alice, bob, root, old, report, queued, cancelled, bob.submit("Bob queued"))


def not_found(session_id, available):
    return {"detail": f"Session '{session_id}' not found. Available sessions: {available}"}


# (method, path): {id} is the session; `session` names which of alice's sessions the request is about.
FOREIGN = [
    ("GET", "/api/report-status/{id}", "queued"),
    ("HEAD", "/api/report-status/{id}", "queued"),
    ("POST", "/api/sessions/{id}/cancel", "queued"),
    ("POST", "/api/sessions/{id}/retry", "cancelled"),
    ("DELETE", "/api/sessions/{id}", "report"),
    ("GET", "/api/reports/{id}", "report"),
    ("GET", "/api/reports/{id}.md", "report"),
    ("GET", "/api/reports/{id}.html", "report"),
    ("GET", "/api/reports/{id}.pdf", "report"),
    ("GET", "/api/reports/{id}/charts/figure-1.png", "report"),
]


@pytest.mark.parametrize("method, path, session", FOREIGN, ids=[f"{m} {p}" for m, p, _ in FOREIGN])
def test_another_users_session_answers_exactly_as_a_missing_one(world, answered_by, method, path, session):
    """Bob learns nothing about alice's session: the same 404 as for an id that does not exist,
    counting only bob's own sessions."""
    alice_id = getattr(world, session)

    foreign = world.bob.open(method, path.format(id=alice_id))
    missing = world.bob.open(method, path.format(id=MISSING))

    assert foreign.status_code == missing.status_code == 404
    if method != "HEAD":
        assert foreign.get_json() == not_found(alice_id, 1)
        assert missing.get_json() == not_found(MISSING, 1)
    assert set(foreign.headers.keys()) == set(missing.headers.keys())  # no ETag, nothing extra
    if method in ("GET", "HEAD"):  # the same request is answered for its owner
        assert world.alice.open(method, path.format(id=alice_id)).status_code == 200


def test_a_poll_with_a_matching_etag_does_not_reveal_another_users_session(world, answered_by):
    """Guessing an ETag (or sending `*`) gets 404, not a 304 that would confirm the session exists."""
    etag = world.alice.get(f"/api/report-status/{world.queued}").headers["ETag"]

    for if_none_match in (etag, "*"):
        response = world.bob.get(f"/api/report-status/{world.queued}", headers={"If-None-Match": if_none_match})
        assert response.status_code == 404 and response.get_json() == not_found(world.queued, 1)


@pytest.mark.parametrize("path", ["/sessions/{id}", "/sessions/{id}/report"])
def test_another_users_session_page_is_not_found(world, path):
    """The pages hide another user's session and report as a missing one does."""
    foreign = world.bob.get(path.format(id=world.report))
    missing = world.bob.get(path.format(id=MISSING))
    own = world.alice.get(path.format(id=world.report))

    assert foreign.status_code == missing.status_code == 404
    assert foreign.get_data() == missing.get_data()
    assert own.status_code == 200
    if path.endswith("/report"):
        assert own.get_data() == REPORT_FILES["report.html"][1]


def test_bobs_attempts_leave_alices_sessions_as_they_were(world, database):
    """Bob's cancel, retry and delete of alice's sessions change nothing."""
    mine = [world.report, world.queued, world.cancelled]
    before = {s: world.alice.status(s) for s in mine}

    world.bob.post(f"/api/sessions/{world.queued}/cancel")
    world.bob.post(f"/api/sessions/{world.cancelled}/retry")
    for s in mine:
        world.bob.delete(f"/api/sessions/{s}")

    assert {s: world.alice.status(s) for s in mine} == before
    assert database.query("SELECT count(*) FROM steps WHERE session_id = ?", (world.report,))[0][0] > 0
    # The requests bob made were valid ones: alice's own succeed.
    assert world.alice.post(f"/api/sessions/{world.queued}/cancel").get_json()["status"] == "cancelled"
    assert world.alice.post(f"/api/sessions/{world.cancelled}/retry").get_json()["status"] == "queued"
    assert world.alice.delete(f"/api/sessions/{world.report}").status_code == 204
    assert world.bob.status(world.bobs)["status"] == "queued"


def test_an_admin_reads_cancels_retries_and_deletes_anyones_sessions(world, answered_by):
    """An admin manages every session; 404s count all of them."""
    root = world.root

    assert root.status(world.queued)["session_id"] == world.queued
    assert root.status(world.old)["status"] == "cancelled"
    assert root.get(f"/api/reports/{world.report}").get_json()["title"] == "Alice's report"
    assert root.get(f"/api/reports/{world.report}.pdf").get_data() == REPORT_FILES["report.pdf"][1]
    assert root.get(f"/sessions/{world.report}").status_code == 200
    assert root.post(f"/api/sessions/{world.bobs}/cancel").get_json()["status"] == "cancelled"
    assert root.post(f"/api/sessions/{world.cancelled}/retry").get_json()["status"] == "queued"
    assert root.delete(f"/api/sessions/{world.report}").status_code == 204

    assert world.alice.get(f"/api/report-status/{world.report}").get_json() == not_found(world.report, 2)
    assert root.get(f"/api/report-status/{MISSING}").get_json() == not_found(MISSING, 4)  # everyone's count


def test_each_user_lists_only_their_own_sessions(world, answered_by):
    """A user's list and its total hold only their own sessions."""
    alice = world.alice.listing()

    assert {s["session_id"] for s in alice["sessions"]} == {world.report, world.queued, world.cancelled}
    assert alice["total_sessions"] == 3 and {s["owner"] for s in alice["sessions"]} == {"alice"}
    bob = world.bob.listing()
    assert [s["session_id"] for s in bob["sessions"]] == [world.bobs] and bob["sessions"][0]["owner"] == "bob"
    assert bob["total_sessions"] == 1 and bob["next_cursor"] is None
    assert world.alice.listing("?status=cancelled")["total_sessions"] == 1
    assert world.alice.ids("?status=cancelled") == {world.cancelled}


def test_pages_of_a_users_listing_hold_only_their_sessions(world, answered_by):
    """Following next_cursor never reaches another user's sessions."""
    first = world.alice.listing("?limit=2")
    second = world.alice.listing(f"?limit=2&cursor={first['next_cursor']}")

    assert first["total_sessions"] == second["total_sessions"] == 3
    assert second["next_cursor"] is None
    assert {s["session_id"] for s in first["sessions"] + second["sessions"]} == {
        world.report, world.queued, world.cancelled}


def test_an_admin_lists_everyone_including_sessions_from_before_accounts(world, answered_by):
    """An admin sees every session, those made before accounts with no owner (null)."""
    listing = world.root.listing()

    owners = {s["session_id"]: s["owner"] for s in listing["sessions"]}
    assert owners == {world.old: None, world.report: "alice", world.queued: "alice", world.cancelled: "alice",
                      world.bobs: "bob"}
    assert listing["total_sessions"] == 5


def test_an_admin_filters_by_owner_and_empty_owner_means_no_ones(world, answered_by):
    """`?owner=NAME` lists one user's sessions; `?owner=` those no one owns."""
    alices = world.root.listing("?owner=alice")
    no_ones = world.root.listing("?owner=")

    assert {s["session_id"] for s in alices["sessions"]} == {world.report, world.queued, world.cancelled}
    assert alices["total_sessions"] == 3
    assert [s["session_id"] for s in no_ones["sessions"]] == [world.old] and no_ones["total_sessions"] == 1
    assert world.root.ids("?owner=bob&status=queued") == {world.bobs}
    assert world.root.listing("?owner=carol") == {"total_sessions": 0, "sessions": [], "next_cursor": None}


@pytest.mark.parametrize("query_string", ["?owner=alice", "?owner=", "?owner=root", "?owner=alice&status=queued"])
def test_anyone_elses_owner_filter_gives_a_user_nothing(world, answered_by, query_string):
    """A user asking for someone else's sessions gets an empty list, not an error."""
    assert world.bob.listing(query_string) == {"total_sessions": 0, "sessions": [], "next_cursor": None}
    assert world.bob.ids("?owner=bob") == {world.bobs}


def test_a_bad_listing_parameter_is_422_whoever_asks(world, answered_by):
    """Invalid parameters go to the Flask view, which says 422 for users and admins alike."""
    for caller in (world.bob, world.root):
        for query_string in ("?limit=abc", "?owner=-x", "?status=done"):
            response = caller.get(f"/api/sessions{query_string}")
            assert response.status_code == 422 and response.is_json, query_string


# -- 4. quotas ------------------------------------------------------------------------------------

def assert_over_quota(response, setting, retry_after):
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.is_json and f"REPORTS_{setting}" in response.get_json()["detail"]
    assert response.headers["Retry-After"] == str(retry_after)


def test_a_user_past_their_active_limit_gets_429_and_nothing_is_stored(app_with, database):
    """The submit past REPORTS_MAX_ACTIVE_PER_USER is refused with a wait, and stores nothing."""
    app = app_with(MAX_ACTIVE_PER_USER=2)
    client, cli = app.test_client(), app.test_cli_runner()
    alice, bob = Api(client, create_user(cli, "alice")), Api(client, create_user(cli, "bob"))
    alice.submit(), alice.submit()

    assert_over_quota(alice.post(SUBMIT, json=body()), "MAX_ACTIVE_PER_USER", 30)

    assert session_rows(database) == 2 and alice.listing()["total_sessions"] == 2
    assert app.extensions["report_reads"].counts("alice")["queued"] == 2
    assert bob.submit()  # one user's limit is not another's


def test_a_running_session_counts_and_cancelling_one_frees_a_place(app_with):
    """Queued and running sessions count; cancelling one lets the user submit again."""
    app = app_with(MAX_ACTIVE_PER_USER=2)
    client, cli, store = app.test_client(), app.test_cli_runner(), app.extensions["report_store"]
    alice = Api(client, create_user(cli, "alice"))
    first, second = alice.submit(), alice.submit()
    assert store.claim("worker").session_id == first  # running now, still one of her two
    assert_over_quota(alice.post(SUBMIT, json=body()), "MAX_ACTIVE_PER_USER", 30)

    assert alice.post(f"/api/sessions/{second}/cancel").get_json()["status"] == "cancelled"

    third = alice.submit()
    assert alice.status(third)["status"] == "queued"


def test_retrying_a_cancelled_session_at_the_limit_gets_429_and_changes_nothing(app_with):
    """A retry is a submission too: at the limit it is refused and the session stays cancelled."""
    app = app_with(MAX_ACTIVE_PER_USER=2)
    client, cli = app.test_client(), app.test_cli_runner()
    alice = Api(client, create_user(cli, "alice"))
    cancelled = alice.submit()
    alice.post(f"/api/sessions/{cancelled}/cancel")
    alice.submit(), alice.submit()
    before = alice.status(cancelled)

    assert_over_quota(alice.post(f"/api/sessions/{cancelled}/retry"), "MAX_ACTIVE_PER_USER", 30)

    assert alice.status(cancelled) == before and before["status"] == "cancelled"


def test_admins_have_the_same_limit(app_with):
    """Admins are not exempt from the per-user limit."""
    app = app_with(MAX_ACTIVE_PER_USER=2)
    root = Api(app.test_client(), create_user(app.test_cli_runner(), "root", "--admin"))
    root.submit(), root.submit()

    assert_over_quota(root.post(SUBMIT, json=body()), "MAX_ACTIVE_PER_USER", 30)


def test_the_open_service_has_no_per_user_limit(app_with):
    """Without users there is no per-user limit: everyone is the same no one."""
    app = app_with(MAX_ACTIVE_PER_USER=2)
    anyone = Api(app.test_client())

    for _ in range(5):
        anyone.submit()
    assert anyone.listing()["total_sessions"] == 5


def test_a_full_queue_gets_429_in_the_open_service_and_frees_as_sessions_start(app_with, database):
    """REPORTS_MAX_QUEUED caps the waiting sessions even in the open service; a started one frees a place."""
    app = app_with(MAX_QUEUED=3)
    anyone = Api(app.test_client())
    for _ in range(3):
        anyone.submit()

    assert_over_quota(anyone.post(SUBMIT, json=body()), "MAX_QUEUED", 60)
    assert session_rows(database) == 3

    assert app.extensions["report_store"].claim("worker") is not None  # one starts: a place in the queue
    assert anyone.submit()
    assert_over_quota(anyone.post(SUBMIT, json=body()), "MAX_QUEUED", 60)


def test_the_queue_limit_counts_every_users_sessions(app_with):
    """The queue cap is shared: other users' sessions fill it too."""
    app = app_with(MAX_QUEUED=3, MAX_ACTIVE_PER_USER=2)
    client, cli = app.test_client(), app.test_cli_runner()
    alice, bob = Api(client, create_user(cli, "alice")), Api(client, create_user(cli, "bob"))
    alice.submit(), alice.submit(), bob.submit()

    assert_over_quota(bob.post(SUBMIT, json=body()), "MAX_QUEUED", 60)


# -- 5. fair turns: the runner serves owners round robin -------------------------------------------

def queue(store, owner, count) -> list[str]:
    return [store.create("a request", {"topic": f"{owner} {i}"}, owner=owner) for i in range(count)]


def serve(store, count, worker="worker-x") -> list[str]:
    """The sessions `count` successive claims start, in order."""
    claims = [store.claim(worker) for _ in range(count)]
    assert None not in claims
    return [claim.session_id for claim in claims]


def owners_of(store, ids) -> list[str]:
    by_id = dict(query(store.engine.url, "SELECT id, owner FROM sessions"))
    return [by_id[i] for i in ids]


def test_owners_take_turns_and_newcomers_go_first_in_the_order_they_came(store):
    """One user's long queue does not hold everyone else's sessions back."""
    alices = queue(store, "alice", 5)
    bobs = queue(store, "bob", 1)
    carols = queue(store, "carol", 2)

    started = serve(store, 8)

    assert owners_of(store, started) == ["alice", "bob", "carol", "alice", "carol", "alice", "alice", "alice"]
    assert [s for s in started if s in alices] == alices  # each owner's own sessions: oldest first
    assert [s for s in started if s in carols] == carols and bobs[0] in started
    assert store.claim("worker-x") is None


def test_an_owner_who_arrives_later_goes_before_those_who_had_turns(store):
    """A user who has not had a turn yet goes next, ahead of a busy user."""
    queue(store, "alice", 3)
    serve(store, 2)
    dave = queue(store, "dave", 1)

    assert serve(store, 1) == dave


def test_a_session_whose_process_died_is_resumed_before_any_queued_one(store):
    """A session interrupted by a crash resumes first; it already had its turn."""
    first, second = queue(store, "alice", 2)
    bobs = queue(store, "bob", 1)
    assert serve(store, 1, worker="dead-worker") == [first]
    store.expire_leases_of("dead-worker")  # its lease has run out

    claim = store.claim("worker-x")

    assert claim.session_id == first and claim.resumed
    assert serve(store, 2) == [bobs[0], second]  # then the turns go on where they were


def test_sessions_of_no_one_take_turns_as_one_more_owner(store):
    """No one's sessions (from before accounts) joined the turns first, at the migration."""
    queue(store, "alice", 3)
    queue(store, NO_OWNER, 3)
    queue(store, "bob", 1)

    started = serve(store, 7)

    assert owners_of(store, started) == ["", "alice", "bob", "", "alice", "", "alice"]


# -- 6. signing in to the pages with a cookie ------------------------------------------------------

@pytest.fixture
def alice(cli):
    return create_user(cli, "alice", password=PASSWORD)


def test_the_sign_in_page_has_a_password_field_and_a_csrf_token(client, alice):
    """The form hides the password as it is typed and carries a CSRF token."""
    html = client.get("/sign-in").get_data(as_text=True)

    [password] = re.findall(r'<input[^>]*\bname="password"[^>]*>', html)
    assert 'type="password"' in password
    assert len(csrf_field(html)) >= 16
    assert 'name="next"' in html


def test_signing_in_sets_an_httponly_lax_cookie_and_the_api_answers_it(client, alice):
    """After signing in, the cookie (out of scripts' reach, not sent cross-site) is all the API needs for reads."""
    response = sign_in(client)

    assert response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/"
    attributes = sign_in_cookie(response)
    assert {"httponly", "samesite=lax", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    session_id = Api(client, alice).submit()
    assert Api(client).status(session_id)["session_id"] == session_id  # the cookie alone
    assert Api(client).ids() == {session_id}
    assert "Signed in as <strong>alice</strong>" in client.get("/").get_data(as_text=True)


def test_over_https_the_cookie_is_secure(client, alice):
    """Over https the sign-in cookie is never sent over plain http."""
    response = sign_in(client, base_url="https://localhost")

    assert response.status_code == 302
    assert {"secure", "httponly", "samesite=lax"} <= sign_in_cookie(response)


def test_writes_with_the_cookie_need_the_pages_csrf_token(client, alice, database):
    """A page on another site cannot make the browser submit or delete with the user's cookie."""
    sign_in(client)
    token = meta_csrf(client.get("/sessions").get_data(as_text=True))

    refused_submit = client.post(SUBMIT, json=body())
    assert refused_submit.status_code == 400 and refused_submit.is_json
    assert "CSRF" in refused_submit.get_json()["detail"]
    assert session_rows(database) == 0
    assert client.post(SUBMIT, json=body(), headers={"X-CSRFToken": "forged"}).status_code == 400

    submitted = client.post(SUBMIT, json=body(), headers={"X-CSRFToken": token})
    assert submitted.status_code == 202
    session_id = submitted.get_json()["session_id"]
    refused_delete = client.delete(f"/api/sessions/{session_id}")
    assert refused_delete.status_code == 400 and refused_delete.is_json
    assert client.delete(f"/api/sessions/{session_id}", headers={"X-CSRFToken": token}).status_code == 204
    assert session_rows(database) == 0


def test_a_proxys_basic_credentials_leave_the_cookie_to_decide(client, alice):
    """A proxy's own `Authorization: Basic` (nginx auth_basic in front) neither names nor refuses an API caller."""
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert_unauthorized(client.get("/api/sessions", headers=basic), invalid=False)
    sign_in(client)
    assert client.get("/api/sessions", headers=basic).status_code == 200
    assert client.get("/sessions", headers=basic).status_code == 200


@pytest.mark.parametrize("name, password", [("alice", "not the passphrase"), ("nobody", PASSWORD)])
def test_a_wrong_name_or_password_shows_the_form_again_and_signs_nobody_in(client, alice, name, password):
    """A wrong password or name gets the form again with one message for both; nobody is signed in."""
    response = sign_in(client, name=name, password=password)

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "do not match an account" in html and 'name="password"' in html
    # The name is kept and the cursor waits in the password field, which names the error for screen readers.
    [password_field] = re.findall(r'<input[^>]*\bname="password"[^>]*>', html)
    assert "autofocus" in password_field and 'aria-describedby="sign-in-error"' in password_field
    assert_unauthorized(client.get("/api/sessions"), invalid=False)
    assert client.get("/").status_code == 302


def test_a_sign_in_without_its_csrf_token_signs_nobody_in(client, alice):
    """A sign-in post that did not come from the form signs nobody in."""
    response = sign_in(client, with_csrf=False)

    assert response.status_code == 200 and "sign in again" in response.get_data(as_text=True)
    assert_unauthorized(client.get("/api/sessions"), invalid=False)


@pytest.mark.parametrize("target, lands_on", [
    ("/sessions?status=failed", "/sessions?status=failed"),
    ("//evil.example/", "/"),
    ("https://evil.example/", "/"),
    ("/\\evil.example", "/"),
    ("/\t/evil.example", "/"),  # a browser drops the tab: "//evil.example"
    ("javascript:alert(1)", "/"),
])
def test_after_sign_in_you_go_back_only_to_a_page_of_this_site(client, alice, target, lands_on):
    """`next` never sends a user to another site after signing in."""
    response = sign_in(client, next=target)

    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.netloc in ("", "localhost")
    assert location.path + (f"?{location.query}" if location.query else "") == lands_on
    # Signed in already, the sign-in page sends you on: to the same places.
    again = urlsplit(client.get("/sign-in", query_string={"next": target}).headers["Location"])
    assert again.netloc in ("", "localhost") and again.path == urlsplit(lands_on).path


def test_signing_out_ends_the_sign_in_and_a_copy_of_the_cookie_too(app, client, alice):
    """After signing out, even a copy of the old cookie (another tab, a thief) no longer works."""
    sign_in(client)
    copy = client.get_cookie("report_session").value
    form_token = csrf_field(client.get("/").get_data(as_text=True))

    response = client.post("/sign-out", data={"csrf_token": form_token})

    assert response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/sign-in"
    assert_unauthorized(client.get("/api/sessions"), invalid=False)
    other = app.test_client()
    other.set_cookie("report_session", copy)
    assert_unauthorized(other.get("/api/sessions"), invalid=False)
    assert other.get("/").status_code == 302


def test_a_sign_out_without_the_csrf_token_signs_nobody_out(client, alice):
    """Another site cannot sign a user out."""
    sign_in(client)

    assert client.post("/sign-out", data={}).status_code == 400
    assert client.get("/api/sessions").status_code == 200


def test_revoking_the_user_ends_their_cookie_sign_in(client, cli, alice):
    """A revoked user is signed out of the pages at once and cannot sign in again."""
    sign_in(client)
    assert client.get("/api/sessions").status_code == 200

    users(cli, "revoke", "alice")

    assert_unauthorized(client.get("/api/sessions"), invalid=False)
    assert client.get("/sessions").status_code == 302
    assert sign_in(client).status_code == 200  # and cannot sign in again


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}])
def test_a_cross_site_sign_in_post_is_refused(client, alice, headers):
    """Another site cannot sign a browser in to an account of its choosing."""
    response = sign_in(client, headers=headers)

    assert response.status_code == 403
    assert_unauthorized(client.get("/api/sessions"), invalid=False)


# -- 7. refusing to start open on a non-loopback address -------------------------------------------

@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:8000", True), ("[::1]:8000", True), ("localhost:8000", True), ("unix:/tmp/x", True),
    ("[::1]", True), ("127.0.0.1", True), ("::1", True),  # gunicorn takes 8000 when no port is given
    ("0.0.0.0:8000", False), ("[::]:8000", False), ("10.1.2.3:80", False), ("example.com:80", False),
    ("[::]", False), ("0.0.0.0", False), (":8000", False),  # ":8000" is every interface to gunicorn
])
def test_is_loopback(address, loopback):
    """Which bind addresses only this machine can reach."""
    assert is_loopback(address) is loopback


def test_the_open_service_refuses_a_non_loopback_address_and_says_what_to_do(app):
    """The refusal names the exposed address and both ways out."""
    with pytest.raises(ConfigError) as refusal:
        check_not_open(app, ["127.0.0.1:8000", "0.0.0.0:8000"])

    message = str(refusal.value)
    assert "0.0.0.0:8000" in message and "127.0.0.1" not in message
    assert "flask --app wsgi users create" in message and "REPORTS_ALLOW_OPEN_ACCESS" in message
    check_not_open(app, ["127.0.0.1:8000", "[::1]:8000", "unix:/tmp/report.sock"])  # loopback only: fine


def test_a_user_or_allow_open_access_lets_it_serve_any_address(app, cli):
    """Once a user exists, or open access is asked for, any address is fine."""
    app.config["ALLOW_OPEN_ACCESS"] = True
    check_not_open(app, ["0.0.0.0:8000"])

    app.config["ALLOW_OPEN_ACCESS"] = False
    create_user(cli, "root", "--admin")
    check_not_open(app, ["0.0.0.0:8000"])


@pytest.mark.slow
def test_gunicorn_refuses_to_serve_the_open_service_on_0_0_0_0_unless_allowed(database, tmp_path):
    """gunicorn on 0.0.0.0 with no users stops with one line; REPORTS_ALLOW_OPEN_ACCESS=true lets it serve."""
    port = free_port()
    env = server_env(database.url, FAST, tmp_path / "agents.log") | {"BIND": f"0.0.0.0:{port}"}
    command = [str(BIN / "gunicorn"), "-w", "1", "wsgi:app"]  # the address from BIND, via gunicorn.conf.py

    refused_run = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)

    assert refused_run.returncode != 0
    assert "Traceback" not in refused_run.stdout + refused_run.stderr
    lines = [line for line in refused_run.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1, refused_run.stderr
    assert lines[0].startswith(f"report-service: no users exist, so anyone who reaches 0.0.0.0:{port}")
    assert "flask --app wsgi users create" in lines[0] and "REPORTS_ALLOW_OPEN_ACCESS=true" in lines[0]

    env["REPORTS_ALLOW_OPEN_ACCESS"] = "true"
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def answers():
        assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
        return http("GET", f"http://127.0.0.1:{port}/api/sessions", timeout=2).status == 200

    try:
        wait_until(answers, timeout=60, message="the open server answers")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own process group: the master and its worker
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            raise
    assert code == 0, (tmp_path / "gunicorn.log").read_text()


# -- 8. migration 0003 on a database from before accounts -------------------------------------------

OLD_STATUSES = ["completed", "completed", "failed", "queued", "generating"]


def test_migration_0003_makes_older_sessions_no_ones_and_counts_them(empty_database):
    """Upgrading keeps older sessions (no one's, counted per owner); downgrading and upgrading again work."""
    database = empty_database
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database.url})
    try:
        with app.app_context():
            flask_migrate.upgrade(revision="0001")
        for i, status in enumerate(OLD_STATUSES):
            database.query(
                "INSERT INTO sessions (id, status, user_request, requirements, topic, status_fields, created_at, "
                "updated_at, attempts, cancel_requested, version, status_document) "
                "VALUES (?, ?, 'r', '{}', 't', '{}', ?, ?, 0, ?, 1, '{}')",
                (f"old-{i}", status, f"2026-01-0{i + 1} 10:00:00.000000", f"2026-01-0{i + 1} 10:00:00.000000",
                 False))
        with app.app_context():
            flask_migrate.upgrade(revision="0002")
            flask_migrate.upgrade()

        assert database.query("SELECT DISTINCT owner FROM sessions") == [("",)]
        counts = {(o, s): n for o, s, n in database.query("SELECT owner, status, sessions FROM session_counts")
                  if n}
        rows = {(o, s): n for o, s, n in database.query("SELECT owner, status, count(*) FROM sessions "
                                                        "GROUP BY owner, status")}
        assert counts == rows == {("", "completed"): 2, ("", "failed"): 1, ("", "queued"): 1, ("", "generating"): 1}
        assert database.query("SELECT count(*) FROM users") == [(0,)]
        # The service reads them as before: open, no one's, counted.
        listing = app.test_client().get("/api/sessions").get_json()
        assert listing["total_sessions"] == 5 and {s["owner"] for s in listing["sessions"]} == {None}

        with app.app_context():
            flask_migrate.downgrade(revision="0002")

        with database.inspector() as schema:
            assert "owner" not in {column["name"] for column in schema.get_columns("sessions")}
            tables = set(schema.get_table_names())
        assert dict(database.query("SELECT status, sessions FROM session_counts WHERE sessions > 0")) == {
            "completed": 2, "failed": 1, "queued": 1, "generating": 1}
        assert "users" not in tables and "queue_turns" not in tables
        assert database.query("SELECT version_num FROM alembic_version") == [("0002",)]
        with app.app_context():
            flask_migrate.upgrade()  # and up again
        assert database.query("SELECT count(*) FROM sessions WHERE owner = ''") == [(5,)]
        # The older unfinished sessions still run: the one left generating resumes, the queued one starts.
        store = app.extensions["report_store"]
        assert [store.claim("worker").session_id for _ in range(2)] == ["old-4", "old-3"]
        assert store.claim("worker") is None
    finally:
        with app.app_context():
            db.engine.dispose()
