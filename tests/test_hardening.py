"""Hostile and malformed requests: security headers everywhere, a JSON 4xx for every bad body,
cross-site posts and foreign hosts refused, the OpenAPI document true to the answers (checked by
schemathesis against a real server), and slow clients that stall nothing."""
import json
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import pytest
from conftest import SUBMISSION
from servers import BIN, Server, migrate, server_env, submit, wait_until
from servers import request as http

from app import create_app

SESSION = "00000000-0000-4000-8000-000000000000"


def queued_session(client):
    return client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]


def session_count(client):
    return client.get("/api/sessions").get_json()["total_sessions"]


# -- security headers on every response --------------------------------------------------------

def test_every_response_says_nosniff_and_carries_a_policy(client):
    session_id = queued_session(client)
    etag = client.get(f"/api/report-status/{session_id}").headers["ETag"]
    answers = {
        "status poll (fast path)": client.get(f"/api/report-status/{session_id}"),
        "status poll, 304": client.get(f"/api/report-status/{session_id}", headers={"If-None-Match": etag}),
        "listing (fast path)": client.get("/api/sessions"),
        "listing, 422": client.get("/api/sessions?limit=ten"),
        "unknown session, 404": client.get(f"/api/report-status/{SESSION}"),
        "report not ready, 409": client.get(f"/api/reports/{session_id}.pdf"),
        "submit, 415": client.post("/api/submit-requirements", data="x", content_type="text/plain"),
        "OpenAPI document": client.get("/api/openapi.json"),
        "page": client.get("/"),
        "stylesheet": client.get("/assets/app.css"),
        "page that does not exist, 404": client.get("/no-such-page"),
    }
    for what, response in answers.items():
        assert response.headers.get("X-Content-Type-Options") == "nosniff", what
        assert response.headers.get("Content-Security-Policy"), what
        assert response.headers.get("Referrer-Policy") == "same-origin", what
    # The API's answers may do nothing in a browser; the pages keep their own, looser policy.
    assert answers["listing (fast path)"].headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in answers["page"].headers["Content-Security-Policy"]


# -- malformed bodies ------------------------------------------------------------------------

MALFORMED = {
    "5,000 levels deep": b'{"user_request": ' + b"[" * 5000 + b"]" * 5000 + b', "requirements": {}}',
    "a 5,000-digit number": b'{"user_request": "x", "requirements": {"topic": "x", "page_count": '
                            + b"9" * 5000 + b', "source_count": 2}}',
    "a float too large": b'{"user_request": "x", "requirements": {"topic": "x", "page_count": 1e999, '
                         b'"source_count": 2}}',
    "NaN": b'{"user_request": "x", "requirements": {"topic": "x", "page_count": NaN, "source_count": 2}}',
    "a lone surrogate": b'{"user_request": "a \\ud800 b", "requirements": {"topic": "x", "page_count": 2, '
                        b'"source_count": 2}}',
    "a lone surrogate in a key": b'{"user_request": "x", "\\udfff": 1, "requirements": {}}',
    "bytes that are not UTF-8": '{"user_request": "caf\xe9", "requirements": {"topic": "x", "page_count": 2, '
                                '"source_count": 2}}'.encode("latin-1"),
    "a NUL character": b'{"user_request": "a\\u0000b", "requirements": {"topic": "x", "page_count": 2, '
                       b'"source_count": 2}}',
    "truncated JSON": b'{"user_request": "x", "requirements": {"topic": ',
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_body_gets_a_json_4xx_and_stores_nothing(client, name):
    response = client.post("/api/submit-requirements", data=MALFORMED[name], content_type="application/json")

    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.is_json and response.get_json()["detail"]
    assert session_count(client) == 0


def test_the_largest_valid_submission_fits_the_body_limit(app, client):
    """Every field at its longest, every character a JSON escape: still under MAX_CONTENT_LENGTH."""
    from app.schemas import LIMITS

    url = "https://example.com/" + "a" * (LIMITS["url_length"] - len("https://example.com/"))
    body = {"user_request": "\U0001F600" * LIMITS["user_request"],
            "requirements": {"topic": "\U0001F600" * LIMITS["topic"], "page_count": 200, "source_count": 50,
                             "complexity": "moderate", "urls": [url] * LIMITS["urls"],
                             "data_urls": [url] * LIMITS["urls"]}}
    data = json.dumps(body)  # ensure_ascii: each emoji is a 12-byte surrogate-pair escape

    assert len(data) < app.config["MAX_CONTENT_LENGTH"]
    assert client.post("/api/submit-requirements", data=data, content_type="application/json").status_code == 202


@pytest.mark.parametrize("url, accepted", [
    ("https://example.com/a?b=1#c", True), ("HTTP://EXAMPLE.COM:8080/x[1]", True),
    ("https://de.wikipedia.org/wiki/Stra%C3%9Fe", True),
    ("http://[+D4iMiN_mIXW]/", False),  # a bracketed host urllib cannot split (schemathesis crashed on it)
    ("http://example.com:99999/", False), ("http://user:pass@example.com/", False), ("https://x/Straße", False),
    ("http://a b/", False), ("ftp://example.com/", False), ("javascript:alert(1)", False),
])
def test_a_url_is_accepted_only_if_urllib_reads_it_as_http(client, url, accepted):
    body = json.loads(json.dumps(SUBMISSION))
    body["requirements"]["urls"] = [url]

    response = client.post("/api/submit-requirements", json=body)

    assert response.status_code == (202 if accepted else 422)
    if accepted:
        parts = urlsplit(url)
        assert parts.scheme.lower() in ("http", "https") and parts.hostname and parts.port in (None, 8080)


def test_a_whole_number_written_as_a_float_is_accepted_and_nothing_else_is(client):
    def with_page_count(value):
        body = json.loads(json.dumps(SUBMISSION))
        body["requirements"]["page_count"] = value
        return client.post("/api/submit-requirements", json=body)

    # JSON Schema, and so the OpenAPI document, counts 20.0 as an integer.
    accepted = with_page_count(20.0)
    assert accepted.status_code == 202
    assert client.get(accepted.headers["Location"]).get_json()["report_requirements"]["page_count"] == 20
    for value in (20.5, "20", True, None):
        assert with_page_count(value).status_code == 422, value


# -- cross-site requests ---------------------------------------------------------------------

@pytest.mark.parametrize("data, content_type, headers", [
    ("confirm=1", "application/x-www-form-urlencoded", {"Origin": "http://evil.example"}),
    ("{}", "text/plain", {"Origin": "http://evil.example"}),
    ("------x--", "multipart/form-data; boundary=x", {"Origin": "http://evil.example"}),
    ("{}", "application/json", {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}),
    ("{}", "application/json", {"Sec-Fetch-Site": "same-site"}),
    (None, None, {"Origin": "null"}),
    ("{}", "text/plain", {}),  # no browser marks: refused for not being JSON
])
def test_a_forged_cancel_is_refused_and_changes_nothing(client, data, content_type, headers):
    session_id = queued_session(client)

    response = client.post(f"/api/sessions/{session_id}/cancel", data=data, content_type=content_type,
                           headers=headers)

    assert response.status_code in (403, 415) and response.is_json
    status = client.get(f"/api/report-status/{session_id}").get_json()
    assert status["status"] == "queued" and status["cancel_requested"] is False


def test_a_forged_submit_or_delete_is_refused(client):
    session_id = queued_session(client)
    evil = {"Origin": "http://evil.example"}

    assert client.post("/api/submit-requirements", data=json.dumps(SUBMISSION), content_type="text/plain",
                       headers=evil).status_code == 403
    assert client.delete(f"/api/sessions/{session_id}", headers=evil).status_code == 403
    assert session_count(client) == 1


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts, old clients: no browser marks at all
    {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},  # the service's own pages
    {"Origin": "http://localhost"},  # an older browser on the same origin
])
def test_the_services_own_pages_and_non_browser_clients_may_cancel(client, headers):
    session_id = queued_session(client)

    response = client.post(f"/api/sessions/{session_id}/cancel", headers=headers)

    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"


# -- the Host header ---------------------------------------------------------------------------

def test_a_foreign_host_is_refused_before_anything_answers(client):
    session_id = queued_session(client)

    for path in ("/api/sessions", f"/api/report-status/{session_id}", "/api/openapi.json", "/"):
        response = client.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 400, path
        assert "REPORTS_TRUSTED_HOSTS" in response.get_json()["detail"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/api/sessions", headers={"Host": "127.0.0.1:8000"}).status_code == 200


@pytest.mark.parametrize("setting, host, answer", [
    ("reports.example.com", "reports.example.com", 200),
    ("reports.example.com", "localhost", 400),
    ("reports.example.com, .internal.example", "a.internal.example:8443", 200),
    ('["reports.example.com"]', "evil.example", 400),
    ("*", "anything.example", 200),
])
def test_trusted_hosts_come_from_the_setting(database, monkeypatch, setting, host, answer):
    monkeypatch.setenv("REPORTS_TRUSTED_HOSTS", setting)
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database.url})

    assert app.test_client().get("/api/sessions", headers={"Host": host}).status_code == answer


# -- one status document -----------------------------------------------------------------------

@pytest.mark.pipeline(["agents:First", "agents:Second"])
def test_cancel_and_retry_answer_with_the_document_a_poll_gets(client):
    session_id = queued_session(client)

    cancelled = client.post(f"/api/sessions/{session_id}/cancel")
    assert cancelled.get_json() == client.get(f"/api/report-status/{session_id}").get_json()
    assert "message" in cancelled.get_json()
    retried = client.post(f"/api/sessions/{session_id}/retry")
    assert retried.status_code == 202
    assert retried.get_json() == client.get(f"/api/report-status/{session_id}").get_json()


def test_the_status_schema_names_every_field_and_admits_a_steps_own(client):
    schema = client.get("/api/openapi.json").get_json()["components"]["schemas"]["Status"]

    assert {"message", "writer", "review", "report_url", "attempts"} <= set(schema["properties"])
    assert schema.get("additionalProperties", True) is not False


def test_an_empty_cursor_is_the_first_page_and_any_well_formed_cursor_a_position(client):
    for _ in range(3):
        queued_session(client)

    first = client.get("/api/sessions?limit=2&cursor=").get_json()
    assert first == client.get("/api/sessions?limit=2").get_json() and first["next_cursor"]
    assert client.get("/api/sessions?cursor=9999999999999999.z").get_json()["sessions"] == \
        client.get("/api/sessions").get_json()["sessions"]
    assert client.get("/api/sessions?cursor=0.a").get_json()["sessions"] == []
    assert client.get("/api/sessions?cursor=yesterday").status_code == 422


@pytest.mark.slow
def test_schemathesis_finds_nothing_in_the_openapi_document(empty_database, tmp_path):
    """Every check schemathesis has (bounded examples), against a real server running sessions."""
    env = server_env(empty_database.url, ["agents:First", "agents:Second"], tmp_path / "agents.log")
    migrate(env)
    with Server(env, tmp_path, workers=2) as server:
        # One worker thread: CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion
        # depth mismatch"), and hypothesis calls it to describe its strategies.
        result = subprocess.run(
            [str(BIN / "st"), "run", f"{server.url}/api/openapi.json", "--checks", "all", "--max-examples", "25",
             "--exclude-checks", "ignored_auth", "--workers", "1", "--seed", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


# -- slow clients --------------------------------------------------------------------------------

class QuickTimeoutServer(Server):
    # gunicorn kills a worker that misses its heartbeat for --timeout seconds; 5 s makes a stalled
    # worker show within the test (the default is 30 s).
    options = ("--timeout", "5")


@pytest.mark.slow
def test_clients_trickling_their_bodies_stall_no_poll_and_kill_no_worker(empty_database, tmp_path):
    env = server_env(empty_database.url, ["agents:First", "agents:Second", "agents:Third"],
                     tmp_path / "agents.log", agent_delay=1.0)
    migrate(env)
    with QuickTimeoutServer(env, tmp_path, workers=2) as server:
        session_id = submit(server.url)
        stop = time.monotonic() + 12  # well past --timeout
        slow = []
        for _ in range(8):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(f"POST /api/submit-requirements HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode())
            slow.append(conn)

        def trickle():
            while time.monotonic() < stop:
                for conn in slow:
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        pass
                time.sleep(1)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        polls = 0
        while time.monotonic() < stop:
            # A stalled server answers no poll until gunicorn kills the stuck worker (the log says
            # so); the timeout only bounds a broken run, it is not a speed check.
            assert http("GET", f"{server.url}/api/report-status/{session_id}", timeout=10).status == 200
            polls += 1
            time.sleep(0.5)
        trickler.join()
        for conn in slow:
            conn.close()
        wait_until(lambda: http("GET", f"{server.url}/api/report-status/{session_id}").json()["status"]
                   == "completed", 60, "the session completed")
        log = server.log_text()
    assert polls >= 10
    assert "WORKER TIMEOUT" not in log and "Using worker: gthread" in log
