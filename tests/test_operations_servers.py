"""Operators' endpoints and logs of real processes (gunicorn, `flask --app wsgi worker`) on the run's database.

/metrics sums the counters of every gunicorn worker (prometheus_client's multiprocess files),
starts again from zero after a `kill -9` and restart, and the metrics folder a server made is
gone after a graceful stop; logs are one JSON object per line with REPORTS_LOG_FORMAT=json; a
worker's --operations-bind port serves the three operators' paths and nothing else.
"""
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url

from servers import BIN, PROJECT, Server, _group_members, free_port, query, request, status, submit, wait_until
from test_workers import Worker, deployment, steps_by_pid  # noqa: F401 (deployment: a fixture)

pytestmark = pytest.mark.slow

STEPS = ["first", "second", "third"]


class AccessLoggedServer(Server):
    """A Server whose access log names the worker that answered each request: "answered-by <pid> /path"."""
    options = ("--access-logfile", "-", "--access-logformat", "answered-by %(p)s %(U)s")

    def answered_metrics(self) -> set[str]:
        return set(re.findall(r"answered-by <(\d+)> /metrics", self.log_text()))


class OperationsWorker(Worker):
    """A `flask --app wsgi worker --operations-bind 127.0.0.1:<port>`."""

    def __init__(self, env, log_dir, port):
        self.log_path = Path(log_dir) / "worker.log"
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "flask"), "--app", "wsgi", "worker", "--operations-bind", f"127.0.0.1:{port}"],
                cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)


def scrape(url: str) -> dict[tuple, float]:
    """GET /metrics, parsed: {(sample name, (label, value)...): value}."""
    response = request("GET", url + "/metrics")
    assert response.status == 200, response.body[:500]
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.body.decode()) for sample in family.samples}


def finished_steps(metrics: dict[tuple, float]) -> dict[str, float]:
    return {step: metrics.get(("reports_steps_finished_total", ("step", step)), 0.0) for step in STEPS}


def completed_sessions(metrics: dict[tuple, float]) -> float:
    return metrics[("reports_sessions", ("status", "completed"))]


def run_sessions(url: str, count: int) -> list[str]:
    sessions = [submit(url, topic=f"Topic {i}") for i in range(count)]
    for session_id in sessions:
        wait_until(lambda: status(url, session_id)["status"] in ("completed", "failed"), 60, session_id)
        assert status(url, session_id)["status"] == "completed"
    return sessions


def workers_of(server: Server) -> list[int]:
    return [pid for pid, state in _group_members(server.proc.pid) if pid != server.proc.pid and state not in "ZX"]


def metrics_folders(pid: int) -> set[str]:
    """The folders of the metrics files a process has mapped (prometheus_client mmaps each *.db it writes)."""
    with open(f"/proc/{pid}/maps") as f:
        return {os.path.dirname(line.split()[-1]) for line in f if line.rstrip().endswith(".db")}


@pytest.fixture
def processes(deployment):  # noqa: F811 (the fixture imported above)
    """(env(**settings), web, worker) as in test_workers, with no PROMETHEUS_MULTIPROC_DIR inherited from here."""
    env, web, worker = deployment

    def clean_env(**extra):
        made = env(**extra)
        made.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return made
    return clean_env, web, worker


def test_metrics_sum_the_counters_of_every_gunicorn_worker(processes, agent_log, tmp_path):
    env, _web, _worker = processes
    # One session at a time per worker, each step stretched: the idle worker's poll takes the others.
    server = AccessLoggedServer(env(delay=0.2, REPORTS_RUNNER_THREADS=1), tmp_path, workers=2).start()
    try:
        sessions = run_sessions(server.url, 6)
        workers = workers_of(server)
        assert len(workers) == 2 and set(steps_by_pid(agent_log)) == {str(pid) for pid in workers}

        def scrape_checked():
            metrics = scrape(server.url)
            assert finished_steps(metrics) == {step: 6 for step in STEPS}
            assert completed_sessions(metrics) == 6
            assert metrics[("reports_sessions_finished_total", ("status", "completed"))] == 6
            return server.answered_metrics() == {str(pid) for pid in workers}
        wait_until(scrape_checked, 30, "both workers to answer /metrics", interval=0.05)

        readyz = request("GET", server.url + "/readyz")
        assert readyz.status == 200 and readyz.json()["checks"]["runner"] == "ok: 1 threads"

        # The default (text) log: one line per step finished and one per status change, per session.
        log = server.log_text()
        for session_id in sessions:
            messages = re.findall(rf"session {session_id}: (.*)", log)
            assert [m.split(" finished in ")[0] for m in messages if " finished in " in m] == [
                f"step {step}" for step in STEPS]
            assert [m for m in messages if " finished in " not in m] == [
                "queued (submitted by anyone)", "queued -> generating (step first, attempt 1)",
                "generating -> completed"]
        assert not [step for step in STEPS if f"step {step} started" in log]  # DEBUG only

        [folder] = metrics_folders(workers[0]) | metrics_folders(workers[1])
        assert os.path.basename(folder).startswith("report-metrics-") and os.path.isdir(folder)
        assert server.kill(signal.SIGTERM) == 0
        assert not os.path.exists(folder), "a graceful stop leaves the metrics folder the server made"
    finally:
        server.kill()


def test_counters_start_again_after_kill_9_and_a_restart(processes, tmp_path):
    env, web, _worker = processes
    folder = tmp_path / "metrics"  # named by the operator: kept between runs, stale files and all
    folder.mkdir()
    environment = env() | {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    first = web(environment, workers=2, name="first")
    run_sessions(first.url, 2)
    assert finished_steps(scrape(first.url)) == {step: 2 for step in STEPS}
    first.kill(signal.SIGKILL)
    assert list(folder.glob("*.db")), "kill -9 leaves the workers' files behind"

    second = web(environment, workers=2, name="second")
    metrics = scrape(second.url)
    assert finished_steps(metrics) == {step: 0 for step in STEPS}  # not the dead server's counters
    assert completed_sessions(metrics) == 2  # read from the database
    run_sessions(second.url, 1)
    metrics = scrape(second.url)
    assert finished_steps(metrics) == {step: 1 for step in STEPS} and completed_sessions(metrics) == 3

    assert second.kill(signal.SIGTERM) == 0
    assert folder.is_dir(), "the operator's folder is not the server's to remove"


def test_json_logs_are_one_object_per_line_with_the_session_fields(processes, tmp_path):
    env, web, _worker = processes
    server = web(env(REPORTS_LOG_FORMAT="json"))
    [session_id] = run_sessions(server.url, 1)
    assert server.kill(signal.SIGTERM) == 0  # gunicorn's shutdown lines too

    lines = [line for line in server.log_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append(None)
    mine = [r for r in records if isinstance(r, dict) and r.get("session_id") == session_id]
    transitions = [(r["from_status"], r["to_status"]) for r in mine if r.get("event") == "transition"]
    assert transitions == [(None, "queued"), ("queued", "generating"), ("generating", "completed")]
    finished = [r for r in mine if r.get("event") == "step_finished"]
    assert [r["step"] for r in finished] == STEPS
    assert all(r["level"] == "INFO" and r["logger"] == "app.runner.executor" and r["seconds"] >= 0 for r in finished)
    assert any(isinstance(r, dict) and r["logger"].startswith("gunicorn") for r in records)

    not_json = [line for line, record in zip(lines, records) if not isinstance(record, dict)]
    assert not not_json, f"log lines that are not JSON objects: {not_json}"
    for record in records:
        assert {"level", "logger", "pid", "message", "time"} <= set(record), record


def test_a_worker_serves_its_own_metrics_at_its_operations_port(processes, agent_log, tmp_path):
    env, web, _worker = processes
    environment = env()
    server = web(environment | {"REPORTS_RUNNER_THREADS": "0"})
    worker = OperationsWorker(environment, tmp_path, free_port())
    try:
        wait_until(lambda: worker.proc.poll() is not None or request("GET", worker.url + "/healthz").status == 200,
                   60, "the worker's operations port")
        assert worker.proc.poll() is None, worker.log()
        readyz = request("GET", worker.url + "/readyz")
        assert readyz.status == 200 and readyz.json()["checks"]["runner"].startswith("ok"), readyz.body
        not_found = request("GET", worker.url + "/api/sessions")
        assert not_found.status == 404 and "detail" in not_found.json()
        assert finished_steps(scrape(worker.url)) == {step: 0 for step in STEPS}

        run_sessions(server.url, 1)
        assert steps_by_pid(agent_log) == {str(worker.proc.pid): len(STEPS)}
        metrics = scrape(worker.url)
        assert finished_steps(metrics) == {step: 1 for step in STEPS}
        assert metrics[("reports_sessions_claimed_total",)] == 1 and completed_sessions(metrics) == 1
        assert finished_steps(scrape(server.url)) == {step: 0 for step in STEPS}  # the web server ran nothing
        assert worker.stop(signal.SIGTERM) == 0
        assert server.kill(signal.SIGTERM) == 0  # not SIGKILL: that would leave its metrics folder in /tmp
    finally:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGKILL)


@pytest.mark.postgres_only("a SQLite file a server has open cannot be taken away from it")
def test_readyz_answers_503_while_the_database_refuses_connections(processes, database):
    env, web, _worker = processes
    server = web(env())
    assert request("GET", server.url + "/readyz").status == 200
    admin = make_url(database.url).set(database="postgres").render_as_string(hide_password=False)
    query(admin, f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
    try:
        query(admin, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database.name}'")
        unavailable = wait_until(lambda: (r := request("GET", server.url + "/readyz")).status == 503 and r, 30)
        assert unavailable.json()["checks"]["database"].startswith("does not answer")
    finally:
        query(admin, f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
    wait_until(lambda: request("GET", server.url + "/readyz").status == 200, 30, "ready again")
    assert server.kill(signal.SIGTERM) == 0
