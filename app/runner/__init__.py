"""The durable-execution core: the store (every execution-state write) and the per-process runner."""
import logging

from flask import Flask

from app.runner.executor import Runner
from app.runner.store import Store

log = logging.getLogger(__name__)

__all__ = ["Runner", "Store", "start_runner", "get_store"]


def get_store(app: Flask) -> Store:
    return app.extensions["report_store"]


def start_runner(app: Flask) -> Runner:
    """Start this process's runner. Call it after fork (gunicorn's post_worker_init), never at import."""
    from app.startup import check_ready

    check_ready(app)
    runner = Runner(get_store(app), app.extensions["report_pipeline"], agent_settings(app),
                    threads=app.config["RUNNER_THREADS"], poll_seconds=app.config["POLL_SECONDS"],
                    stop_timeout=app.config["STOP_TIMEOUT"])
    app.extensions["report_runner"] = runner
    return runner.start()


def agent_settings(app: Flask) -> dict:
    """The deployment settings agents may read (they never see Flask's config itself)."""
    keys = ("LIBRARY_DIR", "ALLOW_PRIVATE_URLS", "FETCH_TIMEOUT", "FETCH_MAX_BYTES", "FETCH_BUDGET",
            "FETCH_CONCURRENCY", "LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL", "LLM_TIMEOUT", "LLM_MAX_RETRIES")
    return {key: app.config[key] for key in keys}
