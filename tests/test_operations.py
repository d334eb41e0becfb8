"""The operators' endpoints (GET /healthz, /readyz, /metrics), as probes and Prometheus meet them.

Everything goes through the Flask test client, which calls app.wsgi_app: the Host check and the
security headers of ResponseGuard, then OperationsEndpoints, as in a server. The counters of
app/metrics.py are process-wide and other tests move them too, so tests compare a scrape before
with one after; the database's gauges belong to the test's own database, so they are absolute.
"""
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SUBMISSION, finished, status_of, wait_for
from prometheus_client.parser import text_string_to_metric_families
from servers import StandIn, query, serving
from sqlalchemy import make_url

from agents import FAST
from app import create_app
from app.extensions import db
from app.models import utcnow
from app.pipeline.web import FetchRefused, fetch
from app.pipeline.writer import ModelWriter
from app.runner import start_runner

UNTRUSTED = "10.1.2.3:8000"  # how a probe calls: by the pod's address, which TRUSTED_HOSTS does not name


# -- helpers ---------------------------------------------------------------------------------------

def scrape(client) -> dict:
    """GET /metrics as {(sample name, frozenset of labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def rise(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape_until(client, before: dict, name: str, by: float, **labels) -> dict:
    """Scrape until `name` has risen by at least `by` (a step's counters move just after its commit)."""
    def risen():
        metrics = scrape(client)
        return metrics if rise(before, metrics, name, **labels) >= by else None

    return wait_for(risen, timeout=20)


def submit(client) -> str:
    response = client.post("/api/submit-requirements", json=SUBMISSION)
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["session_id"]


def dead_owner() -> str:
    """The owner id of a process that has exited, as a kill -9 leaves it in lease_owner."""
    code = "from app.runner.executor import process_owner_id; print(process_owner_id())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent).stdout.strip()


@pytest.fixture
def idle_app(database):
    """An app with REPORTS_RUNNER_THREADS=0: a web server that leaves sessions to `flask worker`s."""
    made = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database.url, "RUNNER_THREADS": 0,
                       "PIPELINE": FAST})
    yield made
    with made.app_context():
        db.engine.dispose()


@contextmanager
def database_gone(app, database, tmp_path):
    """A database that worked disappears (SQLite: its folder moves away; PostgreSQL: it is renamed), then returns."""
    if database.dialect == "sqlite":
        folder = Path(database.name).parent
        assert folder == tmp_path
        away = folder.with_name(folder.name + "-away")
        folder.rename(away)
        with app.app_context():
            db.engine.dispose()  # connections already open would keep the moved file
        try:
            yield
        finally:
            away.rename(folder)
        return
    admin = make_url(database.url).set(database="postgres")
    name, away = database.name, f"{database.name}_away"

    def renamed():
        query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = ? AND pid <> pg_backend_pid()", (name,))
        try:
            query(admin, f'ALTER DATABASE "{name}" RENAME TO "{away}"')
        except Exception as exc:  # a terminated backend may take a moment to go
            if "being accessed by other users" not in str(exc):
                raise
            return False
        return True

    wait_for(renamed, timeout=10)
    try:
        yield
    finally:
        query(admin, f'ALTER DATABASE "{away}" RENAME TO "{name}"')  # so the fixture can drop it


def readyz(client):
    response = client.get("/readyz", headers={"Host": UNTRUSTED})
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.get_json()


# -- /healthz and the HTTP surface -----------------------------------------------------------------

def test_healthz_answers_any_host_and_anyone_while_the_api_asks_for_a_token(app, client, cli):
    result = cli.invoke(args=["users", "create", "operator"])
    assert result.exit_code == 0, result.output
    assert client.get("/api/sessions").status_code == 401  # the service is closed now
    assert client.get("/api/sessions", headers={"Host": UNTRUSTED}).status_code == 400
    assert client.get("/healthz/", headers={"Host": UNTRUSTED}).status_code == 400  # exact paths only

    response = client.get("/healthz", headers={"Host": UNTRUSTED})

    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in response.headers
    head = client.head("/healthz", headers={"Host": UNTRUSTED})
    assert head.status_code == 200 and head.get_data() == b""
    posted = client.post("/readyz", headers={"Host": UNTRUSTED})
    assert posted.status_code == 405 and posted.headers["Allow"] == "GET, HEAD"
    assert posted.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/metrics", headers={"Host": UNTRUSTED}).status_code == 200


def test_metrics_are_served_in_the_format_the_scraper_asks_for(client):
    """Prometheus' text format 0.0.4 to a scraper that does not negotiate; OpenMetrics to one that asks for it."""
    response = client.get("/metrics")

    assert response.status_code == 200 and scrape(client)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "text/plain"
    assert response.mimetype_params.get("version") == "0.0.4", response.headers["Content-Type"]

    asked = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert asked.status_code == 200 and asked.mimetype == "application/openmetrics-text"
    body = asked.get_data(as_text=True)
    assert body.rstrip().endswith("# EOF") and body.count("# EOF") == 1  # one document, the database's gauges in it
    assert "reports_queue_depth" in body and "reports_steps_finished" in body


# -- /readyz ---------------------------------------------------------------------------------------

def test_readyz_waits_for_the_runner_and_stops_being_ready_when_it_stops(app, client):
    status, body = readyz(client)
    assert status == 503 and body["status"] == "unavailable"
    assert "runner: not started" in body["detail"] and "REPORTS_RUNNER_THREADS=4" in body["detail"]
    assert body["checks"]["database"] == "ok" and body["checks"]["migrations"].startswith("ok")

    runner = start_runner(app)
    status, body = readyz(client)
    assert status == 200 and body["status"] == "ready"
    assert set(body["checks"]) == {"database", "migrations", "runner"}
    assert all(finding.startswith("ok") for finding in body["checks"].values()), body

    runner.stop(timeout=10)
    status, body = readyz(client)
    assert status == 503 and body["checks"]["runner"].startswith("stopping")


def test_readyz_is_ready_without_a_runner_when_none_is_configured(idle_app):
    status, body = readyz(idle_app.test_client())

    assert status == 200
    assert body["checks"]["runner"] == "ok: none in this process (REPORTS_RUNNER_THREADS=0)"


def test_readyz_names_a_database_behind_the_latest_migration(idle_app, database):
    client = idle_app.test_client()
    [(latest,)] = database.query("SELECT version_num FROM alembic_version")
    database.query("UPDATE alembic_version SET version_num = '0002'")

    status, body = readyz(client)
    assert status == 503
    assert body["detail"].startswith("migrations: at 0002, not ") and "db upgrade" in body["detail"]

    database.query("UPDATE alembic_version SET version_num = ?", (latest,))
    assert readyz(client)[0] == 200


def test_readyz_says_a_database_that_answers_but_was_never_migrated_is_not_migrated(empty_database):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": empty_database.url, "RUNNER_THREADS": 0})
    try:
        status, body = readyz(app.test_client())
    finally:
        with app.app_context():
            db.engine.dispose()

    assert status == 503 and body["checks"]["database"] == "ok"
    assert body["detail"].startswith("migrations: at none, not ") and "db upgrade" in body["detail"]


def test_readyz_fails_while_the_database_is_gone_without_saying_where_it_is(idle_app, database, tmp_path):
    client = idle_app.test_client()
    assert readyz(client)[0] == 200

    with database_gone(idle_app, database, tmp_path):
        response = client.get("/readyz")
        metrics = client.get("/metrics")

    assert response.status_code == 503, response.get_data(as_text=True)
    checks = response.get_json()["checks"]
    assert checks["database"].startswith("does not answer (OperationalError")
    assert checks["migrations"] == "unknown"
    assert metrics.status_code == 503
    url = make_url(database.url)
    for text in (response.get_data(as_text=True), metrics.get_data(as_text=True)):
        for secret in (database.url, url.render_as_string(hide_password=True), url.host, database.name):
            assert not secret or secret not in text
    assert readyz(client)[0] == 200  # back, and the pool reconnects by itself


def test_readyz_gives_up_on_a_postgresql_server_that_accepts_connections_but_never_answers():
    """A hung database (a dead host behind a live load balancer, a stopped VM) fails the probe: it does not hang it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts the TCP connection; nobody ever says a word on it
    port = silent.getsockname()[1]
    try:
        app = create_app({"TESTING": True, "RUNNER_THREADS": 0,
                          "SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://reports@127.0.0.1:{port}/reports"})
        answers = []
        probe = threading.Thread(target=lambda: answers.append(readyz(app.test_client())), daemon=True)
        probe.start()
        probe.join(timeout=60)  # far above the 5 s connect timeout; without one this waits for ever
        assert answers, "GET /readyz still waiting on a database that never answers"
        status, body = answers[0]
        assert status == 503 and body["checks"]["database"].startswith("does not answer")
    finally:
        silent.close()


# -- /metrics --------------------------------------------------------------------------------------

@pytest.mark.pipeline(FAST)
def test_metrics_count_steps_and_finished_sessions(app, client):
    before = scrape(client)
    start_runner(app)
    ids = [submit(client) for _ in range(3)]
    assert all(wait_for(lambda i=i: finished(client, i))["status"] == "completed" for i in ids)

    after = scrape_until(client, before, "reports_steps_finished_total", 3, step="third")

    for step in ("first", "second", "third"):
        assert rise(before, after, "reports_steps_started_total", step=step) == 3
        assert rise(before, after, "reports_steps_finished_total", step=step) == 3
        assert rise(before, after, "reports_step_duration_seconds_count", step=step) == 3
        assert rise(before, after, "reports_steps_failed_total", step=step) == 0
    assert rise(before, after, "reports_sessions_finished_total", status="completed") == 3
    assert rise(before, after, "reports_sessions_claimed_total") == 3
    assert rise(before, after, "reports_sessions_resumed_total") == 0
    assert value(after, "reports_sessions", status="completed") == 3
    assert value(after, "reports_sessions", status="queued") == value(after, "reports_queue_depth") == 0
    assert value(after, "reports_oldest_queued_seconds") == 0


def test_metrics_show_the_queue_and_how_long_its_oldest_session_has_waited(idle_app):
    client = idle_app.test_client()
    assert value(scrape(client), "reports_queue_depth") == 0
    submit(client)
    time.sleep(0.05)
    submit(client)

    first = scrape(client)
    time.sleep(0.3)
    second = scrape(client)

    assert value(first, "reports_queue_depth") == value(first, "reports_sessions", status="queued") == 2
    assert value(first, "reports_sessions", status="generating") == 0
    waited = value(first, "reports_oldest_queued_seconds")
    assert 0 < waited < 60
    assert value(second, "reports_oldest_queued_seconds") >= waited + 0.25


@pytest.mark.pipeline(["agents:First", "agents:Explode", "agents:Third"])
def test_a_failing_step_is_counted_as_failed(app, client):
    before = scrape(client)
    start_runner(app)
    session_id = submit(client)
    assert wait_for(lambda: finished(client, session_id))["status"] == "failed"

    after = scrape_until(client, before, "reports_sessions_finished_total", 1, status="failed")

    assert rise(before, after, "reports_steps_failed_total", step="explode") == 1
    assert rise(before, after, "reports_steps_finished_total", step="explode") == 0
    assert rise(before, after, "reports_step_duration_seconds_count", step="explode") == 1
    assert rise(before, after, "reports_steps_finished_total", step="first") == 1
    assert rise(before, after, "reports_steps_started_total", step="third") == 0
    assert value(after, "reports_sessions", status="failed") == 1


@pytest.mark.pipeline(FAST)
def test_a_session_of_a_dead_runner_is_counted_as_resumed(app, client, store, database):
    session_id = submit(client)
    claim = store.claim(dead_owner())
    store.commit_step(claim, "first", {"step": "first"}, utcnow())
    database.query("UPDATE sessions SET lease_expires_at = ?", (time.time() + 3600,))  # an hour left
    before = scrape(client)

    start_runner(app)
    assert wait_for(lambda: finished(client, session_id))["status"] == "completed"
    after = scrape_until(client, before, "reports_steps_finished_total", 1, step="third")

    assert rise(before, after, "reports_sessions_resumed_total") == 1
    assert rise(before, after, "reports_sessions_claimed_total") == 1
    assert rise(before, after, "reports_steps_started_total", step="first") == 0
    assert rise(before, after, "reports_steps_started_total", step="second") == 1


@pytest.mark.pipeline(FAST)
def test_a_step_that_finishes_after_its_lease_was_taken_over_is_counted_as_a_lease_loss(
        app, client, store, database, monkeypatch):
    monkeypatch.setenv("TEST_AGENT_DELAY", "1")
    before = scrape(client)
    start_runner(app)
    session_id = submit(client)
    wait_for(lambda: status_of(client, session_id)["status"] == "generating")

    def take_over():  # as another process does once this one's lease ran out (a stall)
        database.query("UPDATE sessions SET lease_expires_at = 0")
        return store.claim("another-process")

    other = wait_for(take_over, timeout=5)
    assert other.session_id == session_id and other.resumed
    after = scrape_until(client, before, "reports_lease_losses_total", 1)

    assert rise(before, after, "reports_lease_losses_total") == 1
    assert rise(before, after, "reports_steps_started_total", step="first") == 1
    assert rise(before, after, "reports_steps_finished_total", step="first") == 0  # not recorded
    assert status_of(client, session_id)["completed_tasks"] == []


class ModelStandIn(StandIn):
    """An OpenAI-compatible chat endpoint that answers, or fails with HTTP 500 while `failing`."""
    failing = False

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if type(self).failing:
            return self.reply(b'{"error": {"message": "the model crashed"}}', "application/json", 500)
        answer = {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                  "model": request["model"], "choices": [{"index": 0, "finish_reason": "stop", "message": {
                      "role": "assistant", "content": "Pack prices fell 14% in 2023 [1]."}}]}
        self.reply(json.dumps(answer).encode(), "application/json")


def test_model_calls_and_fallbacks_are_counted(client, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    outline = {"subject": "battery prices", "summary_word_budget": 60}
    passages = [(1, "Battery pack prices fell 14% in 2023.")]
    monkeypatch.setattr(ModelStandIn, "failing", False)

    with serving(ModelStandIn) as site:
        settings = {"LLM_BASE_URL": f"{site}/v1", "LLM_MODEL": "test-model", "LLM_API_KEY": "k",
                    "LLM_MAX_RETRIES": 0, "LLM_TIMEOUT": 5}
        before = scrape(client)
        assert ModelWriter(settings, "Batteries").summary(outline, passages) == "Pack prices fell 14% in 2023 [1]."
        answered = scrape(client)
        ModelStandIn.failing = True
        writer = ModelWriter(settings, "Batteries")
        assert writer.summary(outline, passages) == "Battery pack prices fell 14% in 2023 [1]."  # extractive
        writer.summary(outline, passages)  # not asked again: the model failed earlier in this report
        failed = scrape(client)

    assert rise(before, answered, "reports_model_calls_total", outcome="ok") == 1
    assert rise(before, answered, "reports_model_calls_total", outcome="error") == 0
    assert rise(before, answered, "reports_model_fallbacks_total") == 0
    assert rise(answered, failed, "reports_model_calls_total", outcome="error") == 1
    assert rise(answered, failed, "reports_model_calls_total", outcome="ok") == 0
    assert rise(answered, failed, "reports_model_fallbacks_total") == 2


class Page(StandIn):
    def do_GET(self):
        self.reply(b"Heat pumps outsold gas boilers in 2023.\n", "text/plain")


def test_url_fetches_are_counted_by_outcome(client):
    with serving(Page) as site:
        before = scrape(client)
        assert fetch(f"{site}/page.txt", allow_private=True, timeout=5).status == 200
        with pytest.raises(FetchRefused, match="blocked"):
            fetch(f"{site}/page.txt", timeout=5)  # a private address, as a stranger's URL may name
        after = scrape(client)

    assert rise(before, after, "reports_url_fetches_total", outcome="ok") == 1
    assert rise(before, after, "reports_url_fetches_total", outcome="blocked") == 1
    assert rise(before, after, "reports_url_fetches_total", outcome="failed") == 0
