"""gunicorn settings and the hooks that start and stop the background runner in each worker."""
import glob
import os
import shutil
import sys
import tempfile

wsgi_app = "wsgi:app"
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threaded workers: a client that sends its request slowly holds one thread, not the whole
# process, so the worker keeps answering polls and keeps telling the master it is alive (a sync
# worker stuck reading a body misses its heartbeat and is killed, runner threads and all).
# An exposed deployment still belongs behind a buffering proxy (README: "Behind nginx").
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
# A worker told to stop waits for its running steps (REPORTS_STOP_TIMEOUT, 20 s by default)
# before exiting; give it that long before gunicorn kills it.
graceful_timeout = 30
# gunicorn 25+ opens a control socket at one fixed path per user; two servers on one host
# (a blue/green deploy, the tests) would fight over it, and nothing here uses it.
control_socket_disable = True


def metrics_folder() -> str:
    """A folder for this server's metrics files, named for this (master) process; those of servers
    that are gone (killed, so on_exit never ran) are removed."""
    base = tempfile.gettempdir()
    for folder in glob.glob(os.path.join(base, "report-metrics-*")):
        pid = folder.rsplit("-", 1)[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(folder, ignore_errors=True)
    folder = os.path.join(base, f"report-metrics-{os.getpid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


# GET /metrics sums every worker's counters: each writes them to files in this folder
# (prometheus_client's multiprocess mode), which must be known before the app is imported.
# One per server unless the operator names one; it is emptied at each start.
METRICS_DIR_IS_OURS = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if METRICS_DIR_IS_OURS:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder()

# REPORTS_LOG_FORMAT=json: gunicorn's own lines are JSON too, from its first ("Starting gunicorn"),
# written before the app exists; the app's lines then go through the same handlers (app/logs.py).
# A logger class rather than logconfig_dict, which would also switch on an access log line per request.
if os.environ.get("REPORTS_LOG_FORMAT", "").strip().strip('"') == "json":
    from gunicorn.glogging import Logger

    class JsonLogger(Logger):
        def setup(self, cfg):
            from app.logs import json_formatter

            super().setup(cfg)
            for handler in self.error_log.handlers + self.access_log.handlers:
                handler.setFormatter(json_formatter())

    logger_class = JsonLogger


def on_starting(server):
    """In the master, before any worker: refuse to start on a bad pipeline, an unmigrated database, or
    open to the network (no users yet) unless REPORTS_ALLOW_OPEN_ACCESS says so."""
    from app import ConfigError, create_app
    from app.extensions import db
    from app.startup import check_not_open, check_ready

    # Counters of a previous run of this server would otherwise be summed with this one's.
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)
    try:
        app = create_app()
        check_ready(app)  # logs the database and SQLite library in use
        check_not_open(app, list(server.cfg.bind))
        with app.app_context():
            db.engine.dispose()  # no connection may cross the fork
    except ConfigError as exc:
        print(f"report-service: {exc}", file=sys.stderr)
        sys.exit(1)


def post_worker_init(worker):
    """Each worker runs sessions in its own thread pool, created here, after the fork (none with
    REPORTS_RUNNER_THREADS=0: a web server that leaves sessions to `flask worker` processes)."""
    from app.runner import start_runner

    start_runner(worker.wsgi)


def worker_exit(server, worker):
    """On SIGTERM: stop claiming, let running steps end (bounded), hand the leases back."""
    app = getattr(worker, "wsgi", None)
    runner = app.extensions.get("report_runner") if app is not None else None
    if runner is not None:
        runner.stop()


def child_exit(server, worker):
    """A worker is gone: its live gauges leave /metrics (its counters stay, as Prometheus expects)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if METRICS_DIR_IS_OURS:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
