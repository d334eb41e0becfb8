"""`flask --app wsgi worker`: a process that runs sessions and serves no HTTP.

Web servers (gunicorn, REPORTS_RUNNER_THREADS=0) and workers then scale and deploy apart, on one
machine or many sharing a PostgreSQL database. A worker stops as a gunicorn worker does: on
SIGTERM (or Ctrl-C) it takes no new session, lets running steps finish for up to
REPORTS_STOP_TIMEOUT seconds, and hands every lease back so another process resumes at once.
"""
import logging
import os
import signal
import time

import click
from flask import current_app

from app.operations import OperationsEndpoints, not_found, parse_bind, serve_operations
from app.runner import start_runner
from app.security import ResponseGuard
from app.startup import ConfigError

log = logging.getLogger(__name__)


@click.command("worker")
@click.option("--operations-bind", metavar="HOST:PORT", callback=lambda _ctx, _param, value: _bind(value),
              help="Also serve GET /healthz, /readyz and /metrics (nothing else) here, for probes and Prometheus.")
def worker_command(operations_bind):
    """Run report sessions (REPORTS_RUNNER_THREADS at a time) until SIGTERM or Ctrl-C; serve no API."""
    app = current_app._get_current_object()
    if app.config["RUNNER_THREADS"] < 1:
        raise click.ClickException("REPORTS_RUNNER_THREADS is 0, so this worker would run nothing: set it to the "
                                   "number of sessions the worker may run at once")
    signals = []

    def request_stop(signum, _frame):
        # Only note it: a handler runs in the main thread between any two bytecodes, and taking a
        # lock there (threading.Event.set) can wait for ever on a lock the interrupted code holds.
        signals.append(signum)
        if len(signals) > 1:  # a second signal: the operator will not wait for running steps
            os.write(2, b"worker: second signal; leaving running sessions to recovery\n")
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    try:
        runner = start_runner(app)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if operations_bind is not None:
        endpoints = ResponseGuard(OperationsEndpoints(not_found, app.extensions["report_readiness"],
                                                      app.extensions["report_reads"]), None)
        try:
            serve_operations(endpoints, *operations_bind)
        except OSError as exc:
            runner.stop()
            raise click.ClickException(f"cannot serve at {operations_bind[0]}:{operations_bind[1]}: {exc}") from None
    while not signals:
        time.sleep(0.2)
    log.info("worker %d: %s received; finishing running steps", os.getpid(), signal.Signals(signals[0]).name)
    if runner.stop():
        # Mid-step still: exit anyway; the dead-owner check (or the lease running out) hands them on.
        os._exit(1)


def _bind(value):
    """--operations-bind as (host, port), or click's usage error naming the option."""
    try:
        return parse_bind(value) if value is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--operations-bind") from None
