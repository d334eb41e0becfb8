"""The durable-execution core: the store (every execution-state write), its reads, and the per-process runner."""
import logging
from typing import Optional

from flask import Flask

from app.runner.executor import Runner
from app.runner.reads import Reads
from app.runner.store import Store

log = logging.getLogger(__name__)

__all__ = ["Reads", "Runner", "Store", "start_runner", "get_reads", "get_store"]


def get_store(app: Flask) -> Store:
    return app.extensions["report_store"]


def get_reads(app: Flask) -> Reads:
    return app.extensions["report_reads"]


def start_runner(app: Flask) -> Optional[Runner]:
    """Start this process's runner. Call it after fork (gunicorn's post_worker_init), never at import.

    None when REPORTS_RUNNER_THREADS is 0: a web server that leaves sessions to `flask worker` processes.
    """
    from app.startup import check_ready

    check_ready(app)
    if app.config["RUNNER_THREADS"] < 1:
        log.info("no runner in this process (REPORTS_RUNNER_THREADS=0): sessions run in `flask worker` processes")
        return None
    runner = Runner(get_store(app), get_reads(app), app.extensions["report_pipeline"], agent_settings(app),
                    threads=app.config["RUNNER_THREADS"], poll_seconds=app.config["POLL_SECONDS"],
                    stop_timeout=app.config["STOP_TIMEOUT"])
    app.extensions["report_runner"] = runner
    return runner.start()


def agent_settings(app: Flask) -> dict:
    """The deployment settings agents may read (they never see Flask's config itself)."""
    keys = ("LIBRARY_DIR", "ALLOW_PRIVATE_URLS", "FETCH_TIMEOUT", "FETCH_MAX_BYTES", "FETCH_BUDGET",
            "FETCH_CONCURRENCY", "LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL", "LLM_TIMEOUT", "LLM_MAX_RETRIES")
    return {key: app.config[key] for key in keys}
