"""The HTTP API through the Flask test client: every route, every error, nothing changed by a rejection."""
import copy
import json

import pytest
from conftest import SUBMISSION
from sqlalchemy import func, select

from app.extensions import db
from app.models import ReportSession, Step


def submit(client, body=None):
    return client.post("/api/submit-requirements", json=body or SUBMISSION)


def count_rows(app):
    with app.app_context():
        return (db.session.execute(select(func.count()).select_from(ReportSession)).scalar_one(),
                db.session.execute(select(func.count()).select_from(Step)).scalar_one())


# -- submit -----------------------------------------------------------------------------------

def test_submit_queues_a_session_and_points_at_its_status(client):
    response = submit(client)

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["status_url"] == f"/api/report-status/{body['session_id']}"
    assert response.headers["Location"] == body["status_url"]


def test_new_session_status_has_every_field_old_clients_read(client):
    session_id = submit(client).get_json()["session_id"]

    status = client.get(f"/api/report-status/{session_id}").get_json()

    assert status["session_id"] == session_id
    assert status["status"] == "queued"
    assert status["user_request"] == SUBMISSION["user_request"]
    assert status["report_requirements"] == SUBMISSION["requirements"]
    assert status["current_agent"] is None
    assert status["completed_tasks"] == []
    assert status["progress"] == 0
    assert status["started_at"].endswith("Z") and status["updated_at"].endswith("Z")
    assert status["finished_at"] is None and status["error"] is None and status["report_url"] is None


def test_complexity_defaults_to_moderate(client):
    body = copy.deepcopy(SUBMISSION)
    del body["requirements"]["complexity"]
    session_id = submit(client, body).get_json()["session_id"]

    status = client.get(f"/api/report-status/{session_id}").get_json()

    assert status["report_requirements"]["complexity"] == "moderate"


def requirements(**fields):
    return {"user_request": "x", "requirements": fields}


BAD_BODIES = {
    "empty object": ({}, ["user_request", "requirements"]),
    "no requirements": ({"user_request": "x"}, ["requirements"]),
    "empty topic, negative pages": (requirements(topic="", page_count=-1), ["topic", "page_count", "source_count"]),
    "pages as a word": (requirements(topic="t", page_count="many", source_count=1), ["page_count"]),
    "pages as a numeric string": (requirements(topic="t", page_count="10", source_count=1), ["page_count"]),
    "absurd counts": (requirements(topic="t", page_count=100000, source_count=10 ** 9), ["page_count", "source_count"]),
    "unknown complexity": (requirements(topic="t", page_count=1, source_count=1, complexity="epic"), ["complexity"]),
    "unknown field": (dict(SUBMISSION, priority="high"), ["priority"]),
    "unknown requirement": (requirements(**SUBMISSION["requirements"], colour="red"), ["colour"]),
    "requirements not an object": ({"user_request": "x", "requirements": [1, 2]}, ["requirements"]),
    "body is a list": ([SUBMISSION], None),
    "user_request too long": (dict(SUBMISSION, user_request="x" * 5001), ["user_request"]),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_invalid_submissions_are_422_with_field_messages_and_change_nothing(app, client, case):
    body, fields = BAD_BODIES[case]
    before = count_rows(app)

    response = client.post("/api/submit-requirements", json=body)

    assert response.status_code == 422
    payload = response.get_json()
    assert payload["detail"].startswith("Invalid input")
    flat = json.dumps(payload["errors"])
    for field in fields or []:
        assert f'"{field}"' in flat, (field, payload)
    assert count_rows(app) == before


@pytest.mark.parametrize("raw, content_type, status", [
    (b'{"user_request": ', "application/json", 400),
    (b"", "application/json", 400),
    (b"user_request=x", "application/x-www-form-urlencoded", 415),
    (json.dumps(SUBMISSION).encode(), "text/plain", 415),
    (json.dumps(SUBMISSION).encode(), None, 415),
])
def test_unparseable_or_non_json_bodies_are_refused_as_json(app, client, raw, content_type, status):
    before = count_rows(app)
    headers = {"Content-Type": content_type} if content_type else {}

    response = client.post("/api/submit-requirements", data=raw, headers=headers)

    assert response.status_code == status
    assert response.is_json and response.get_json()["detail"]
    assert count_rows(app) == before


def test_oversized_body_is_413(app, client):
    before = count_rows(app)
    body = dict(SUBMISSION, user_request="x" * (app.config["MAX_CONTENT_LENGTH"] + 10))

    response = client.post("/api/submit-requirements", json=body)

    assert response.status_code == 413
    assert "too large" in response.get_json()["detail"]
    assert count_rows(app) == before


def test_wrong_method_is_405_json(client):
    response = client.get("/api/submit-requirements")

    assert response.status_code == 405
    assert response.get_json()["detail"] == "Method not allowed."
    assert "POST" in response.headers["Allow"]


def test_unknown_api_path_is_404_json(client):
    response = client.get("/api/nothing-here")

    assert response.status_code == 404
    assert response.is_json and response.get_json()["detail"]


# -- status -----------------------------------------------------------------------------------

def test_unknown_session_is_404_with_the_seed_detail(client):
    submit(client)
    submit(client)

    response = client.get("/api/report-status/280bd232-92c3-46cf-951f-13e1a6a097d7")

    assert response.status_code == 404
    assert response.get_json()["detail"] == (
        "Session '280bd232-92c3-46cf-951f-13e1a6a097d7' not found. Available sessions: 2")


def test_status_answers_if_none_match_with_304_until_the_session_changes(app, client, store):
    session_id = submit(client).get_json()["session_id"]
    first = client.get(f"/api/report-status/{session_id}")
    etag = first.headers["ETag"]

    again = client.get(f"/api/report-status/{session_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag

    store.cancel(session_id)
    changed = client.get(f"/api/report-status/{session_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert changed.get_json()["status"] == "cancelled"


def test_status_view_without_the_fast_path_answers_the_same(app, client):
    """The Flask view behind StatusFastPath gives the same document, ETag and 304."""
    session_id = submit(client).get_json()["session_id"]
    fast = client.get(f"/api/report-status/{session_id}")
    with app.test_request_context(f"/api/report-status/{session_id}", headers={"If-None-Match": fast.headers["ETag"]}):
        from app.sessions.routes import report_status
        conditional = app.make_response(report_status(session_id))
    with app.test_request_context(f"/api/report-status/{session_id}"):
        full = app.make_response(report_status(session_id))

    assert conditional.status_code == 304
    assert full.status_code == 200
    assert full.headers["ETag"] == fast.headers["ETag"]
    assert full.get_json() == fast.get_json()


def test_head_of_status_has_headers_and_no_body(client):
    session_id = submit(client).get_json()["session_id"]

    response = client.head(f"/api/report-status/{session_id}")

    assert response.status_code == 200 and response.data == b"" and response.headers["ETag"]


def test_status_rejects_other_methods_as_json(client):
    session_id = submit(client).get_json()["session_id"]

    response = client.post(f"/api/report-status/{session_id}")

    assert response.status_code == 405 and response.is_json


# -- listing ----------------------------------------------------------------------------------

def test_listing_is_newest_first_with_the_seed_fields(client):
    ids = [submit(client, dict(SUBMISSION, requirements=dict(SUBMISSION["requirements"], topic=f"Topic {i}")))
           .get_json()["session_id"] for i in range(3)]

    body = client.get("/api/sessions").get_json()

    assert body["total_sessions"] == 3
    assert [s["session_id"] for s in body["sessions"]] == ids[::-1]
    assert body["sessions"][0]["topic"] == "Topic 2"
    assert set(body["sessions"][0]) >= {"session_id", "status", "topic", "started_at", "updated_at"}
    assert body["next_cursor"] is None


def test_listing_pages_with_a_cursor_without_gaps_or_repeats(client):
    ids = [submit(client).get_json()["session_id"] for _ in range(7)]

    seen, cursor = [], None
    while True:
        query = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/sessions", query_string=query).get_json()
        assert page["total_sessions"] == 7
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == ids[::-1]


def test_listing_filters_by_status(client, store):
    keep = submit(client).get_json()["session_id"]
    cancelled = submit(client).get_json()["session_id"]
    store.cancel(cancelled)

    body = client.get("/api/sessions?status=cancelled").get_json()

    assert body["total_sessions"] == 1
    assert [s["session_id"] for s in body["sessions"]] == [cancelled]
    assert keep not in json.dumps(body)


@pytest.mark.parametrize("query", ["status=sleeping", "limit=0", "limit=100000", "limit=ten", "cursor=%%%"])
def test_listing_rejects_bad_parameters(client, query):
    response = client.get(f"/api/sessions?{query}")

    assert response.status_code == 422
    assert response.get_json()["errors"]


# -- cancel, retry, delete --------------------------------------------------------------------

def test_cancel_of_a_queued_session_is_immediate(client):
    session_id = submit(client).get_json()["session_id"]

    response = client.post(f"/api/sessions/{session_id}/cancel")

    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    assert client.get(f"/api/report-status/{session_id}").get_json()["finished_at"]


def test_retry_requeues_a_cancelled_session_and_refuses_a_queued_one(client):
    session_id = submit(client).get_json()["session_id"]

    refused = client.post(f"/api/sessions/{session_id}/retry")
    assert refused.status_code == 409 and "queued" in refused.get_json()["detail"]

    client.post(f"/api/sessions/{session_id}/cancel")
    retried = client.post(f"/api/sessions/{session_id}/retry")
    assert retried.status_code == 202
    assert retried.get_json()["status"] == "queued"
    assert retried.get_json()["finished_at"] is None


def test_delete_removes_the_session(client):
    session_id = submit(client).get_json()["session_id"]

    assert client.delete(f"/api/sessions/{session_id}").status_code == 204
    assert client.get(f"/api/report-status/{session_id}").status_code == 404
    assert client.get("/api/sessions").get_json()["total_sessions"] == 0


@pytest.mark.parametrize("method, path", [
    ("delete", "/api/sessions/{id}"), ("post", "/api/sessions/{id}/cancel"), ("post", "/api/sessions/{id}/retry"),
    ("get", "/api/reports/{id}")])
def test_actions_on_unknown_sessions_are_404(client, method, path):
    response = getattr(client, method)(path.format(id="no-such-session"))

    assert response.status_code == 404
    assert "Session 'no-such-session' not found" in response.get_json()["detail"]


def test_report_is_409_until_the_session_completes(client):
    session_id = submit(client).get_json()["session_id"]

    response = client.get(f"/api/reports/{session_id}")

    assert response.status_code == 409
    assert "queued" in response.get_json()["detail"]


# -- OpenAPI ----------------------------------------------------------------------------------

def test_openapi_document_is_generated_from_the_schemas(client):
    spec = client.get("/api/openapi.json").get_json()

    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert {"/api/submit-requirements", "/api/report-status/{session_id}", "/api/sessions",
            "/api/sessions/{session_id}", "/api/sessions/{session_id}/cancel",
            "/api/sessions/{session_id}/retry", "/api/reports/{session_id}"} <= set(paths)
    requirements = spec["components"]["schemas"]["Requirements"]
    assert requirements["properties"]["page_count"]["maximum"] == 200
    assert set(requirements["required"]) == {"topic", "page_count", "source_count"}


def test_listing_view_without_the_fast_path_answers_the_same(app, client):
    """ListingFastPath answers valid requests before Flask; the Flask view behind it gives the same page."""
    import base64

    for _ in range(3):
        submit(client)
    fast = client.get("/api/sessions?limit=2").get_json()
    with app.test_request_context("/api/sessions?limit=2"):
        from app.sessions.routes import list_sessions
        slow = app.make_response(list_sessions()).get_json()

    assert fast == slow and len(fast["sessions"]) == 2 and fast["next_cursor"]
    naive = base64.urlsafe_b64encode(b"2026-01-01T00:00:00|x").decode()  # a cursor without a time zone
    assert client.get(f"/api/sessions?cursor={naive}").status_code == 422
