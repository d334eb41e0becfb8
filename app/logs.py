"""Where the service's log lines go and how they look: readable text, or one JSON object per line.

Under gunicorn our lines go through its error log's handlers, so they interleave with its own
in one stream; elsewhere (the CLI, `flask worker`, the development server) to stderr. JSON lines
carry what a call passed in `extra` (session_id, step, event, seconds...) as fields of their own,
for log collectors to filter on. gunicorn.conf.py uses json_formatter() for gunicorn's lines
from its very first one, before the app exists.
"""
import logging

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, pid, message, and the call's `extra` fields."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("{levelname}{name}{process}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"})


def send_package_logs(log_format: str) -> None:
    """Route the `app` package's loggers: gunicorn's handlers when under gunicorn, else one stderr handler."""
    gunicorn_logger = logging.getLogger("gunicorn.error")
    package_logger = logging.getLogger("app")
    if gunicorn_logger.handlers:
        package_logger.handlers = gunicorn_logger.handlers
        package_logger.setLevel(gunicorn_logger.level)
    elif not package_logger.handlers:
        package_logger.addHandler(logging.StreamHandler())
        package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    for handler in package_logger.handlers:  # under gunicorn also its own lines, so the stream is one format
        if log_format == "json":
            handler.setFormatter(json_formatter())
        elif handler.formatter is None:
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))
