"""Web servers and `flask --app wsgi worker` processes as separate processes, on the run's database.

Real processes, real signals: gunicorn with REPORTS_RUNNER_THREADS=0 serves and runs nothing, a
worker runs sessions and serves nothing, SIGTERM hands a worker's sessions on, and a submit
wakes the runner that will run it instead of leaving it to the next poll.
"""
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import read_agent_log
from servers import BIN, PROJECT, Server, migrate, server_env, status, submit, wait_until

pytestmark = pytest.mark.slow

FAST = ["agents:First", "agents:Second", "agents:Third"]
# Longer than any test here waits: a session that starts in time was woken, not found by a poll.
NO_POLLING = {"REPORTS_POLL_SECONDS": 120}


class Worker:
    """One `flask --app wsgi worker` process in a process group of its own, logging to a file."""

    def __init__(self, env, log_dir, name="worker"):
        self.log_path = Path(log_dir) / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "flask"), "--app", "wsgi", "worker"], cwd=PROJECT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def started(self) -> bool:
        """Its runner is up: the runner's start line is in the log (or the process already ended)."""
        return self.proc.poll() is not None or "threads, lease" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=60) -> int:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        return self.proc.wait(timeout)


@pytest.fixture
def deployment(database, tmp_path, agent_log):
    """Start web servers and workers on the test's database; everything still running is killed at the end."""
    started = []

    def env(delay=0.0, **settings):
        made = server_env(database.url, FAST, agent_log, delay, settings)
        migrate(made)
        return made

    def web(env_, **kwargs):
        server = Server(env_, tmp_path, **kwargs).start()
        started.append(server)
        return server

    def worker(env_, name="worker"):
        made = Worker(env_, tmp_path, name)
        started.append(made)
        wait_until(made.started, 60, f"{name} to start")
        assert made.proc.poll() is None, made.log()
        return made

    yield env, web, worker
    for process in started:
        if isinstance(process, Server):
            process.kill()
        elif process.proc.poll() is None:
            process.stop(signal.SIGKILL)


def steps_by_pid(agent_log):
    return Counter(pid for _session, _step, pid in read_agent_log(agent_log))


def test_web_servers_without_runner_threads_leave_every_session_to_the_workers(deployment, agent_log):
    env, web, worker = deployment
    settings = env()
    server = web(settings | {"REPORTS_RUNNER_THREADS": "0"}, workers=2)
    runner = worker(settings | {"REPORTS_RUNNER_THREADS": "2"})

    sessions = [submit(server.url, topic=f"Topic {i}") for i in range(4)]
    for session_id in sessions:
        assert wait_until(lambda: status(server.url, session_id)["status"] in ("completed", "failed"), 60)
        assert status(server.url, session_id)["status"] == "completed"

    assert steps_by_pid(agent_log) == {str(runner.proc.pid): 4 * len(FAST)}
    assert "no runner in this process (REPORTS_RUNNER_THREADS=0)" in server.log_text()


def test_a_worker_told_to_stop_finishes_its_step_and_another_carries_on(deployment, database, agent_log):
    """SIGTERM: the running step ends and is recorded, the lease is handed back, and nothing runs twice."""
    env, web, worker = deployment
    settings = env(delay=1.0)
    server = web(settings | {"REPORTS_RUNNER_THREADS": "0"})
    first = worker(settings, name="first")
    session_id = submit(server.url)
    wait_until(lambda: read_agent_log(agent_log), 30, "the first step to start")

    assert first.stop(signal.SIGTERM) == 0
    assert "finishing running steps" in first.log() and "stopped; handed back" in first.log()
    [(lease_owner, recorded)] = database.query(
        "SELECT lease_owner, (SELECT count(*) FROM steps WHERE session_id = ?) FROM sessions WHERE id = ?",
        (session_id, session_id))
    assert lease_owner is None and recorded >= 1  # handed back, with the step that was running recorded

    second = worker(settings, name="second")
    wait_until(lambda: status(server.url, session_id)["status"] == "completed", 60)

    runs = [(step, pid) for sid, step, pid in read_agent_log(agent_log) if sid == session_id]
    assert [step for step, _ in runs] == ["first", "second", "third"]  # each step once, in order
    assert {pid for _, pid in runs} == {str(first.proc.pid), str(second.proc.pid)}


def test_a_worker_with_no_threads_refuses_to_start(database, tmp_path, agent_log):
    settings = server_env(database.url, FAST, agent_log, extra={"REPORTS_RUNNER_THREADS": "0"})
    result = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "worker"], cwd=PROJECT, env=settings,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "REPORTS_RUNNER_THREADS is 0" in result.stderr


def test_a_worker_refuses_an_unmigrated_database(empty_database, agent_log):
    settings = server_env(empty_database.url, FAST, agent_log)
    result = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "worker"], cwd=PROJECT, env=settings,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "flask --app wsgi db upgrade" in result.stderr


@pytest.mark.postgres_only("LISTEN/NOTIFY wakes runners in other processes; on SQLite they poll")
def test_a_submit_wakes_an_idle_worker_in_another_process(deployment, agent_log):
    env, web, worker = deployment
    settings = env(**NO_POLLING)
    server = web(settings | {"REPORTS_RUNNER_THREADS": "0"})
    runner = worker(settings)
    first = submit(server.url)  # taken by the worker's first look, or by a wake-up
    wait_until(lambda: status(server.url, first)["status"] == "completed", 60)

    # Idle now, its next poll two minutes away: only the submit's NOTIFY can start this one in time.
    second = submit(server.url)
    wait_until(lambda: status(server.url, second)["status"] == "completed", 60, "a woken worker")
    assert steps_by_pid(agent_log) == {str(runner.proc.pid): 2 * len(FAST)}


def test_a_submit_wakes_the_runner_of_the_process_that_took_it(deployment):
    """On any database the web process's own runner starts a session it accepted at once."""
    env, web, _worker = deployment
    server = web(env(**NO_POLLING))
    first = submit(server.url)
    wait_until(lambda: status(server.url, first)["status"] == "completed", 60)

    second = submit(server.url)
    wait_until(lambda: status(server.url, second)["status"] == "completed", 60, "a woken runner")
