"""gunicorn settings and the hooks that start and stop the background runner in each worker."""
import os
import sys

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


def on_starting(server):
    """In the master, before any worker: refuse to start on a bad pipeline, an unmigrated database, or
    open to the network (no users yet) unless REPORTS_ALLOW_OPEN_ACCESS says so."""
    from app import ConfigError, create_app
    from app.extensions import db
    from app.startup import check_not_open, check_ready

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
