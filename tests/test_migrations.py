"""The schema and start-up, as an operator meets them: real `flask` and `gunicorn` processes.

`flask --app wsgi db upgrade` builds the schema of models.py on an empty database and leaves nothing
for autogenerate to find; a bad pipeline or an unmigrated database stops the CLI and gunicorn with one
line saying what to do, never a traceback; and a CLI command runs on the bundled SQLite (or on
psycopg, on PostgreSQL) without starting the background runner.
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from app.models import ReportSession

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BAD_PIPELINE = '["nosuchmodule:Agent"]'
TIMEOUT = 60

pytestmark = pytest.mark.slow


def environment(database_url, **extra):
    """The caller's environment without any of the service's settings, on the given database."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REPORTS_", "FLASK_", "GUNICORN_"))
           and key not in ("DATABASE_URL", "BIND", "WEB_CONCURRENCY", "PYTHONPATH")}
    env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run(args, database_url, stdin=None, timeout=TIMEOUT, **extra_env):
    """Run a command from the project root (so gunicorn.conf.py applies); kill its whole group on timeout."""
    proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=environment(database_url, **extra_env),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    started = time.monotonic()
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(args)} still running after {timeout}s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return proc.returncode, stdout, stderr, time.monotonic() - started


def upgrade(database_url):
    code, stdout, stderr, _ = run(["flask", "--app", "wsgi", "db", "upgrade"], database_url)
    assert code == 0, stdout + stderr
    return stdout + stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn(database_url, **extra_env):
    return run(["gunicorn", "-w", "1", "-b", f"127.0.0.1:{free_port()}", "wsgi:app"], database_url, timeout=30,
               **extra_env)


def own_lines(stderr):
    """stderr without gunicorn's own log lines ("[date] [pid] [INFO] Starting gunicorn ...")."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]


# -- migrations -------------------------------------------------------------------------------

def test_db_upgrade_on_an_empty_database_creates_the_tables_and_indexes_of_the_models(empty_database):
    output = upgrade(empty_database.url)

    assert "Running upgrade  -> 0001" in output
    with empty_database.inspector() as schema:
        tables = set(schema.get_table_names())
        indexes = {index["name"]: table for table in tables for index in schema.get_indexes(table)}
    revision = empty_database.query("select version_num from alembic_version")
    assert {"sessions", "steps", "artifacts", "session_counts", "users", "queue_turns", "alembic_version"} <= tables
    expected = {index.name for index in ReportSession.__table__.indexes}
    assert expected == {"ix_sessions_newest", "ix_sessions_status_newest", "ix_sessions_status_updated",
                        "ix_sessions_lease_owner", "ix_sessions_owner_newest", "ix_sessions_status_owner_newest"}
    assert {name: "sessions" for name in expected}.items() <= indexes.items()
    assert indexes.get("ix_queue_turns_order") == "queue_turns"
    assert revision == [("0003",)]  # the newest revision


def test_db_check_after_upgrade_finds_nothing_to_generate(empty_database):
    upgrade(empty_database.url)

    code, stdout, stderr, _ = run(["flask", "--app", "wsgi", "db", "check"], empty_database.url)

    assert code == 0, stdout + stderr
    assert "No new upgrade operations detected" in stdout + stderr


def test_steps_cascade_from_sessions_in_the_migrated_schema(empty_database):
    upgrade(empty_database.url)

    with empty_database.inspector() as schema:
        keys = schema.get_foreign_keys("steps")

    assert [(k["referred_table"], k["constrained_columns"], k["referred_columns"], k["options"].get("ondelete"))
            for k in keys] == [("sessions", ["session_id"], ["id"], "CASCADE")]


# -- start-up refusals --------------------------------------------------------------------------

def test_cli_refuses_an_unimportable_pipeline_with_one_line(database):
    code, stdout, stderr, _ = run(["flask", "--app", "wsgi", "sessions", "list"], database.url,
                                  REPORTS_PIPELINE=BAD_PIPELINE)

    assert code != 0
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "REPORTS_PIPELINE" in lines[0] and "nosuchmodule" in lines[0]


def test_gunicorn_refuses_an_unmigrated_database_and_says_to_upgrade(empty_database):
    code, stdout, stderr, elapsed = gunicorn(empty_database.url)

    assert code != 0
    assert "Traceback" not in stdout + stderr
    lines = own_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("report-service: the database") and "is not migrated" in lines[0]
    assert "flask --app wsgi db upgrade" in lines[0]
    assert elapsed < 30


def test_gunicorn_refuses_an_unimportable_pipeline_with_one_line(database):
    code, stdout, stderr, _ = gunicorn(database.url, REPORTS_PIPELINE=BAD_PIPELINE)

    assert code != 0
    assert "Traceback" not in stdout + stderr
    lines = own_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("report-service: REPORTS_PIPELINE") and "nosuchmodule" in lines[0]


# -- the database library, and no runner in CLI commands ----------------------------------------

SHELL_SCRIPT = """\
import threading
from flask import current_app
engine = current_app.extensions['sqlalchemy'].engine
if engine.dialect.name == 'sqlite':
    with engine.connect() as conn:
        print('SQLITE', conn.exec_driver_sql('select sqlite_version()').scalar())

print('DBAPI', engine.dialect.dbapi.__name__)
print('RUNNER', 'report_runner' in current_app.extensions)
print('THREADS', ','.join(sorted(t.name for t in threading.enumerate())))
"""

# The DB-API module the service must use on each database: pysqlite3 bundles a SQLite with the WAL-reset fix.
DBAPI = {"sqlite": "pysqlite3", "postgresql": "psycopg"}


def shell_report(stdout):
    report = {}
    for line in stdout.splitlines():
        line = line.lstrip(">. ")
        key, _, value = line.partition(" ")
        if key in ("SQLITE", "DBAPI", "RUNNER", "THREADS"):
            report[key] = value
    return report


def test_flask_shell_uses_the_services_database_library_and_exits_promptly(database):
    # A migrated database: were the runner started, it would find nothing to stop it from running.
    code, stdout, stderr, elapsed = run(["flask", "--app", "wsgi", "shell"], database.url, stdin=SHELL_SCRIPT,
                                        timeout=30)

    assert code == 0, stdout + stderr
    report = shell_report(stdout)
    assert report["DBAPI"].split(".")[0] == DBAPI[database.dialect], report
    if database.dialect == "sqlite":
        assert tuple(int(x) for x in report["SQLITE"].split(".")) >= (3, 51, 3), report
    assert report["RUNNER"] == "False"
    assert "report-runner" not in report["THREADS"]
    assert "Traceback" not in stdout + stderr
    assert elapsed < 15


def test_upgrading_a_populated_database_fills_the_status_counts(empty_database):
    """0002 adds session_counts and counts the sessions already there."""
    assert run(["flask", "--app", "wsgi", "db", "upgrade", "0001"], empty_database.url)[0] == 0
    for i, status in enumerate(["completed", "completed", "failed", "queued"]):
        empty_database.query("INSERT INTO sessions (id, status, user_request, requirements, topic, status_fields, "
                             "created_at, updated_at, attempts, cancel_requested, version, status_document) "
                             "VALUES (?, ?, 'r', '{}', 't', '{}', '2026-01-01', '2026-01-01', 0, ?, 1, '{}')",
                             (str(i), status, False))

    assert run(["flask", "--app", "wsgi", "db", "upgrade"], empty_database.url)[0] == 0

    counts = dict(empty_database.query("SELECT status, sessions FROM session_counts"))
    assert counts == {"queued": 1, "generating": 0, "completed": 2, "failed": 1, "cancelled": 0}
