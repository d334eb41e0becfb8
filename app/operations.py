"""Operators' endpoints: GET /healthz, GET /readyz and GET /metrics, answered before Flask dispatches.

They are for load balancers, orchestrators and Prometheus, which call them every few seconds
from an address of their own: no sign-in, any Host header (app/security.py lets these paths
through), no cookie, no session data. /healthz says the process answers; /readyz that it can do
its work (the database answers and is at the newest migration, and this process's runner, where
it should have one, is turning); /metrics gives the counters of app/metrics.py and, read from the
database at each scrape, the sessions by status and the queue.
"""
import functools
import json
import logging
import os
import threading
import time
from socketserver import ThreadingMixIn
from typing import Callable, Iterator, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.engine import Engine

from app.models import STATUSES
from app.runner.reads import Reads
from app.startup import current_revisions

log = logging.getLogger(__name__)

PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Readiness:
    """Whether this process can do its work now: the checks behind GET /readyz, one database query each time."""

    def __init__(self, engine: Engine, heads: Callable[[], set[str]], runner_threads: int,
                 runner: Callable[[], object]):
        self.engine = engine
        # The newest revision(s) in migrations/, read on the first probe: most processes are never probed.
        self.heads = functools.cache(heads)
        self.runner_threads = runner_threads
        self.runner = runner  # this process's Runner, once started (None before, or with no threads)
        self._was_ready: Optional[bool] = None

    def check(self) -> tuple[bool, dict[str, str]]:
        """(ready, each check's finding); a finding that does not start with "ok" says what is wrong."""
        checks, cause = {"database": "ok"}, None
        try:
            with self.engine.connect() as conn:
                revisions = current_revisions(conn)
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            # The reason's class only: the message can name the database's host, and anyone may ask.
            checks["database"] = f"does not answer ({type(cause).__name__}; see this process's log)"
            checks["migrations"] = "unknown"
        else:
            latest = ", ".join(sorted(self.heads()))
            checks["migrations"] = (f"ok: at {latest}, the latest" if revisions == self.heads() else
                                    f"at {', '.join(sorted(revisions)) or 'none'}, not {latest}: "
                                    "run `flask --app wsgi db upgrade`")
        checks["runner"] = self._runner_finding()
        ready = all(finding.startswith("ok") for finding in checks.values())
        self._log_change(ready, f"database: {cause}" if cause is not None else problems(checks))
        return ready, checks

    def _runner_finding(self) -> str:
        if self.runner_threads < 1:
            return "ok: none in this process (REPORTS_RUNNER_THREADS=0)"
        runner = self.runner()
        if runner is None:
            return f"not started in this process, though REPORTS_RUNNER_THREADS={self.runner_threads}"
        problem = runner.problem()
        return f"ok: {self.runner_threads} threads" if problem is None else problem

    def _log_change(self, ready: bool, reason: str) -> None:
        # Once per change, not once per probe: an orchestrator asks every second.
        if ready != self._was_ready:
            self._was_ready = ready
            if ready:
                log.info("ready: the database answers at the latest migration and the runner turns")
            else:
                log.warning("not ready: %s", reason)


def problems(checks: dict[str, str]) -> str:
    """The failing checks' findings, as one line."""
    return "; ".join(f"{name}: {finding}" for name, finding in checks.items() if not finding.startswith("ok"))


class DatabaseMetrics:
    """Gauges read from the database at each scrape: the same numbers from every process that serves them."""

    def __init__(self, reads: Reads):
        self.reads = reads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.reads.counts()
        oldest = self.reads.oldest_queued_at()
        sessions = GaugeMetricFamily("reports_sessions", "Sessions stored, by status.", labels=["status"])
        for status in STATUSES:
            sessions.add_metric([status], counts[status])
        yield sessions
        yield GaugeMetricFamily("reports_queue_depth", "Sessions waiting to start (status queued).",
                                value=counts["queued"])
        age = max(0.0, time.time() - oldest.timestamp()) if oldest is not None else 0.0
        yield GaugeMetricFamily("reports_oldest_queued_seconds",
                                "How long the session that has waited longest to start has waited (0: none waits).",
                                value=age)


class _ThisProcess:
    """The default registry's metrics (this process's counters, and its CPU and memory), as one collector."""

    def collect(self):
        return REGISTRY.collect()


def exposition(reads: Reads, accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of every metric: this process's (under gunicorn, every worker's), then the database's.

    In the format the scraper's Accept header asks for: Prometheus' text format, or OpenMetrics.
    """
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(DatabaseMetrics(reads))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class OperationsEndpoints:
    """WSGI middleware answering the three operators' paths; everything else goes on to the app."""

    def __init__(self, wsgi_app, readiness: Readiness, reads: Reads):
        self.wsgi_app = wsgi_app
        self.readiness = readiness
        self.reads = reads

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in PATHS:
            return self.wsgi_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return self._answer(start_response, method, "405 METHOD NOT ALLOWED",
                                {"detail": f"{path} answers GET and HEAD only."}, [("Allow", "GET, HEAD")])
        if path == "/healthz":
            return self._answer(start_response, method, "200 OK", {"status": "ok"})
        if path == "/readyz":
            ready, checks = self.readiness.check()
            if ready:
                return self._answer(start_response, method, "200 OK", {"status": "ready", "checks": checks})
            return self._answer(start_response, method, "503 SERVICE UNAVAILABLE",
                                {"status": "unavailable", "detail": problems(checks), "checks": checks})
        try:
            body, content_type = exposition(self.reads, environ.get("HTTP_ACCEPT", ""))
        except Exception as exc:
            log.exception("GET /metrics failed")
            cause = getattr(exc, "orig", None) or exc
            return self._answer(start_response, method, "503 SERVICE UNAVAILABLE",
                                {"detail": f"metrics could not be read ({type(cause).__name__}); "
                                           "see this process's log"})
        return self._send(start_response, method, "200 OK", content_type, body)

    def _answer(self, start_response, method, status, document, headers=()):
        return self._send(start_response, method, status, "application/json", json.dumps(document).encode(), headers)

    @staticmethod
    def _send(start_response, method, status, content_type, body, headers=()):
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"), *headers])
        return [b"" if method == "HEAD" else body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # a probe a second would fill the log
        pass


def parse_bind(value: str) -> tuple[str, int]:
    """"host:port" ("[::1]:9100", ":9100" for every address) as (host, port); ValueError if it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_operations(wsgi_app, host: str, port: int) -> threading.Thread:
    """Serve `wsgi_app` (the operators' paths only, for a `flask worker`) at host:port from a daemon thread."""
    server = make_server(host, port, wsgi_app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="operations-http", daemon=True)
    thread.start()
    log.info("serving /healthz, /readyz and /metrics at http://%s:%d", *server.server_address[:2])
    return thread


def not_found(environ, start_response):
    """What a worker's operations port says to any other path."""
    body = json.dumps({"detail": "Not found: this port serves /healthz, /readyz and /metrics only."}).encode()
    start_response("404 NOT FOUND", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
