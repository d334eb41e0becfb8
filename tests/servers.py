"""Real servers for tests: gunicorn on a test database, killed by signal, and small JSON/HTTP helpers.

`Server` runs `.venv/bin/gunicorn -w N wsgi:app` from the project root, so gunicorn.conf.py's
hooks start a runner in each worker (and stop it on a graceful exit), exactly as in production.
It runs in a process group of its own, so `kill()` reaches the master and every worker at once,
as a crash of the whole machine or container would. Besides the standard library, only `query`
uses anything: the database drivers the service itself uses.

A test that kills or restarts a server will see some of its requests fail on the way: refused,
reset, or an answer cut short after its headers. `BROKEN_EXCHANGE` names them all, and
`wait_until` (with `Server.start`) treats them as "ask again", so every poll of such a server
survives its death in one place.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

TESTS = Path(__file__).resolve().parent
PROJECT = TESTS.parent
BIN = PROJECT / ".venv" / "bin"

# Inherited settings that would change what a test server does behind the test's back.
_SCRUBBED_PREFIXES = ("REPORTS_", "FLASK_", "TEST_AGENT_")
_SCRUBBED = {"DATABASE_URL", "WEB_CONCURRENCY", "BIND", "GUNICORN_CMD_ARGS", "PYTHONPATH"}

# What a client gets from a server that dies or restarts under it: connection refused or reset
# and timeouts are OSErrors (urllib's URLError included); a response cut short after its headers
# is an http.client.HTTPException (IncompleteRead, RemoteDisconnected's BadStatusLine), not one.
BROKEN_EXCHANGE = (ConnectionError, TimeoutError, urllib.error.URLError, http.client.HTTPException)


def query(url, sql: str, params=()) -> list[tuple]:
    """Rows of one statement on a database (a SQLAlchemy URL), run in a transaction of its own and committed.

    Parameters take `?` placeholders; on PostgreSQL they become psycopg's `%s` (so SQL with
    parameters may hold no other `?` or `%` there). Rows come straight from the driver the service
    uses (pysqlite3 or psycopg), so SQLite's are exactly what the service's own connections read.
    """
    from sqlalchemy import make_url

    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        from app.database import sqlite_dbapi

        conn = sqlite_dbapi().connect(url.database, timeout=30)
    else:
        import psycopg

        conn = psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                               dbname=url.database)
        if params:
            sql = sql.replace("?", "%s")
        params = params or None  # psycopg then leaves the SQL as it is, % and all
    try:
        cursor = conn.execute(sql, params)
        rows = cursor.fetchall() if cursor.description is not None else []
        conn.commit()
        return rows
    finally:
        conn.close()


class StandIn(BaseHTTPRequestHandler):
    """The handler of a stand-in web site: reply() sends one whole answer, and nothing is logged."""

    def reply(self, body: bytes, content_type: str, status: int = 200, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler) -> Iterator[str]:
    """A stand-in web site: `handler` (a BaseHTTPRequestHandler class) on a free 127.0.0.1 port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(database_url: str, pipeline: list[str], agent_log, agent_delay: float = 0.0,
               extra: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """The environment of a test server: its database, the test agents and any REPORTS_* settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(DATABASE_URL=str(database_url), PYTHONPATH=str(TESTS), REPORTS_PIPELINE=json.dumps(pipeline),
               TEST_AGENT_LOG=str(agent_log), TEST_AGENT_DELAY=str(agent_delay))
    for key, value in (extra or {}).items():
        if not key.startswith("REPORTS_"):
            raise ValueError(f"extra settings must be REPORTS_*, not {key}")
        env[key] = value if isinstance(value, str) else json.dumps(value)
    return env


def migrate(env: dict[str, str], timeout: float = 120) -> None:
    """`flask --app wsgi db upgrade` on the env's DATABASE_URL; fails with its output if it fails."""
    result = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=PROJECT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process still in a process group, zombies included (Linux /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append((int(entry), fields[0]))
    return members


class Server:
    """One `gunicorn -w N wsgi:app` on a free 127.0.0.1 port, logging to a file in `log_dir`."""

    def __init__(self, env: dict[str, str], log_dir, workers: int = 1, name: str = "server",
                 port: Optional[int] = None):
        self.env = env
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.proc: Optional[subprocess.Popen] = None

    # What to run, from where, and the path that answers 200 once it serves (a subclass may change them).
    app = "wsgi:app"
    options: tuple[str, ...] = ()
    folder = PROJECT
    ready_path = "/api/sessions"

    def start(self, timeout: float = 60) -> "Server":
        """Start, and return once GET `ready_path` answers 200; fail with the log tail otherwise."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "gunicorn"), "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}", *self.options,
                 self.app],
                cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                if request("GET", self.url + self.ready_path, timeout=2).status == 200:
                    return self
            except BROKEN_EXCHANGE:  # not listening yet, or a worker died while it answered
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"gunicorn did not answer {self.ready_path} within {timeout}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> Optional[int]:
        """Send `sig` to the whole process group (master and workers) and wait until all of it is gone.

        Returns the master's exit status. If the group outlives `timeout` it is SIGKILLed and this
        raises, so a server that does not stop on SIGTERM fails the test instead of hanging it.
        """
        if self.proc is None:
            return None
        pgid = self.proc.pid  # start_new_session: the master leads its own group
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Workers orphaned by a dead master are reparented to init; wait until each has died
        # (a zombie is dead: it only waits for init to reap it).
        while not timed_out and any(state not in "ZX" for _, state in _group_members(pgid)):
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
        if timed_out:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            raise RuntimeError(f"gunicorn (pgid {pgid}) was still running {timeout}s after signal {sig}; "
                               f"killed it:\n{self.log_tail()}")
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.kill()


# -- HTTP ---------------------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def request(method: str, url: str, body: Any = None, timeout: float = 10) -> Response:
    """One HTTP request with an optional JSON body; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


def submit(base_url: str, topic: str = "Electric Vehicle Market Analysis") -> str:
    """Submit a report request; returns the new session id."""
    response = request("POST", base_url + "/api/submit-requirements", {
        "user_request": f"A report on {topic}",
        "requirements": {"topic": topic, "page_count": 2, "source_count": 2, "complexity": "simple"}})
    if response.status != 202:
        raise AssertionError(f"submit answered {response.status}: {response.body[:500]!r}")
    return response.json()["session_id"]


def status_response(base_url: str, session_id: str) -> Response:
    return request("GET", f"{base_url}/api/report-status/{session_id}")


def status(base_url: str, session_id: str) -> dict[str, Any]:
    """A session's status document."""
    response = status_response(base_url, session_id)
    if response.status != 200:
        raise AssertionError(f"status of {session_id} answered {response.status}: {response.body[:500]!r}")
    return response.json()


def wait_until(predicate: Callable[[], Any], timeout: float, message: str = "condition",
               interval: float = 0.2) -> Any:
    """Poll predicate() every `interval` s until it is truthy and return its value.

    A broken exchange with a server (BROKEN_EXCHANGE) counts as "not yet": the server may be
    dying, restarting or replacing a worker, and the next poll asks again. The timeout is only an
    upper bound that stops a broken test from hanging, never a speed check.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except BROKEN_EXCHANGE as exc:
            value = exc
        if value and not isinstance(value, BaseException):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message}: not true after {timeout}s (last value {value!r})")
        time.sleep(interval)
