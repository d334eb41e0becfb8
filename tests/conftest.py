"""Fixtures: an app on a freshly migrated database per test, its client and CLI runner.

The suite runs on SQLite (the default) or, with TEST_DATABASE=postgresql, on a throwaway PostgreSQL
cluster it starts itself (tests/postgres.py); `make test` runs it on both. Either way one database is
migrated once per run with `flask db upgrade`'s own code, and each test gets a copy of it
(`database`): a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL. Tests about one
database only are marked `sqlite_only` or `postgres_only` (with the reason) and skipped on the other.
"""
import itertools
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, inspect, make_url
from sqlalchemy.engine import Inspector

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # "agents:First" resolves in this process, as in the servers tests start

import postgres  # noqa: E402
from servers import query  # noqa: E402

from app import create_app  # noqa: E402
from app.database import engine_options, sqlite_dbapi  # noqa: E402
from app.extensions import db  # noqa: E402

DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
TEST_DATABASE = os.environ.get("TEST_DATABASE", "sqlite")
# Markers that keep a test to one database, and the database each one keeps it to.
ONLY_ON = {"sqlite_only": "sqlite", "postgres_only": "postgresql"}


def pytest_configure(config):
    if TEST_DATABASE not in DATABASES:
        raise pytest.UsageError(f"TEST_DATABASE={TEST_DATABASE!r}: use one of {', '.join(DATABASES)}")


def database_in_use() -> str:
    if TEST_DATABASE == "sqlite":
        dbapi = sqlite_dbapi()
        return f"SQLite {dbapi.sqlite_version} via {dbapi.__name__} (TEST_DATABASE=postgresql for PostgreSQL)"
    return (f"{postgres.version() or 'PostgreSQL (not installed: run make postgres)'}, "
            "a throwaway cluster started for this run (TEST_DATABASE=postgresql)")


def pytest_report_header(config):
    return f"database: {database_in_use()}"


def pytest_terminal_summary(terminalreporter):
    # Again at the end (and under -q, which hides the header): `make test` prints two runs' results.
    terminalreporter.write_line(f"database: {database_in_use()}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name, database in ONLY_ON.items():
            marker = item.get_closest_marker(name)
            if marker and database != TEST_DATABASE:
                reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
                item.add_marker(pytest.mark.skip(reason=f"{DATABASES[database]} only: {reason}"))


# -- databases ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Database:
    """One database of the run: its SQLAlchemy URL, and a way to look into it."""
    url: str

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return make_url(self.url).get_backend_name()

    @property
    def name(self) -> str:
        """The database's name on PostgreSQL, its file's path on SQLite."""
        return make_url(self.url).database

    def query(self, sql: str, params=()) -> list[tuple]:
        """Rows of one statement (`?` placeholders), committed; see servers.query."""
        return query(self.url, sql, params)

    @contextmanager
    def inspector(self) -> Iterator[Inspector]:
        """SQLAlchemy's view of the schema (tables, indexes, keys), on the engine the service would build."""
        engine = create_engine(self.url, **engine_options(self.url, busy_timeout_ms=10000))
        try:
            yield inspect(engine)
        finally:
            engine.dispose()


class SQLiteFiles:
    """SQLite databases: a file in the folder given; pytest removes the folders."""

    def empty(self, folder: Path, name: str) -> Database:
        path = folder / f"{name}.db"
        path.touch()
        return Database(f"sqlite:///{path}")

    def copy(self, template: Database, folder: Path, name: str) -> Database:
        path = folder / f"{name}.db"
        shutil.copy(template.name, path)
        return Database(f"sqlite:///{path}")

    def drop(self, database: Database) -> None:
        pass

    def close(self) -> None:
        pass


class PostgresDatabases:
    """Databases on one throwaway PostgreSQL cluster, started here; `close()` stops it."""

    def __init__(self):
        self.cluster = postgres.Cluster().start()
        self.serial = itertools.count(1)

    def _unique(self, name: str) -> str:
        return f"{name}_{next(self.serial)}"

    def empty(self, folder: Path, name: str) -> Database:
        return Database(self.cluster.create_database(self._unique(name)))

    def copy(self, template: Database, folder: Path, name: str) -> Database:
        return Database(self.cluster.create_database(self._unique(name), template=template.name))

    def drop(self, database: Database) -> None:
        self.cluster.drop_database(database.name)

    def close(self) -> None:
        self.cluster.stop()


@pytest.fixture(scope="session")
def databases():
    """Where the run's databases live: SQLite files, or a PostgreSQL cluster started for the run."""
    made = PostgresDatabases() if TEST_DATABASE == "postgresql" else SQLiteFiles()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="session")
def migrated_template(databases, tmp_path_factory) -> Database:
    """One database migrated with `flask db upgrade`'s own code; each test gets a copy."""
    import flask_migrate

    template = databases.empty(tmp_path_factory.mktemp("template"), "template")
    app = create_app({"SQLALCHEMY_DATABASE_URI": template.url})
    with app.app_context():
        flask_migrate.upgrade()
        db.engine.dispose()  # PostgreSQL copies a template only while nothing is connected to it
    return template


@pytest.fixture
def database(databases, migrated_template, tmp_path) -> Iterator[Database]:
    """This test's own migrated database, dropped after it."""
    made = databases.copy(migrated_template, tmp_path, "app")
    yield made
    databases.drop(made)


@pytest.fixture
def empty_database(databases, tmp_path) -> Iterator[Database]:
    """An empty database of this test's own (not migrated), dropped after it."""
    made = databases.empty(tmp_path, "empty")
    yield made
    databases.drop(made)


# -- the app --------------------------------------------------------------------------------------

@pytest.fixture
def app(database, request):
    marker = request.node.get_closest_marker("pipeline")
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database.url}
    if marker:
        config["PIPELINE"] = list(marker.args[0])
    app = create_app(config)
    yield app
    runner = app.extensions.get("report_runner")
    if runner is not None:
        runner.stop(timeout=10)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def cli(app):
    return app.test_cli_runner()


@pytest.fixture
def store(app):
    return app.extensions["report_store"]


@pytest.fixture
def agent_log(tmp_path, monkeypatch):
    path = tmp_path / "agents.log"
    monkeypatch.setenv("TEST_AGENT_LOG", str(path))
    return path


def read_agent_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split()[:3] for line in f]


EV_SALES = """# Title: Electric car sales by region
# Source: Test Agency Outlook 2024
# Retrieved: 2026-11-01
# Unit: million cars
year,China,Europe,United States
2020,1.2,1.4,0.3
2021,3.3,2.3,0.6
2022,5.9,2.7,1.0
2023,8.1,3.2,1.4
"""


@pytest.fixture
def library(tmp_path):
    """A small library the tests write themselves: two on-topic documents, one off-topic, one data file."""
    folder = tmp_path / "library"
    folder.mkdir()
    (folder / "ev-sales.md").write_text(
        "# Electric car sales\n\nSource: Test Agency Outlook 2024\nRetrieved: 2026-11-01\n\n"
        "Electric car sales reached 14 million worldwide in 2023, according to the Test Agency. "
        "Electric cars made up 18% of all new cars sold in 2023.\n\n"
        "China accounted for about 60% of new electric car registrations in 2023. "
        "Europe was the second largest electric car market in 2023.\n")
    (folder / "ev-charging.md").write_text(
        "# Charging networks\n\nSource: Test Grid Report 2024\n\n"
        "Public chargers for electric cars passed 4 million worldwide in 2023. "
        "Fast chargers grew faster than slow chargers in 2023 across most markets. "
        "Most electric car owners charge at home, while electric car drivers in cities rely on public chargers.\n")
    (folder / "tea.md").write_text(
        "# Tea harvests\n\nSource: Test Tea Board\n\n"
        "Tea harvests in the highlands depend on the monsoon rains each spring. "
        "Green tea exports rose in 2022 according to the tea board.\n")
    (folder / "data").mkdir()
    (folder / "data" / "ev-sales.csv").write_text(EV_SALES)
    return folder


SUBMISSION = {
    "user_request": "A market analysis of electric vehicles for investors",
    "requirements": {"topic": "Electric Vehicle Market Analysis", "page_count": 2, "source_count": 3,
                     "complexity": "simple"},
}


def wait_for(predicate, timeout=30.0):
    """Poll until predicate() is truthy; the timeout only stops a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def status_of(client, session_id):
    return client.get(f"/api/report-status/{session_id}").get_json()


def finished(client, session_id):
    status = status_of(client, session_id)
    return status if status["status"] in ("completed", "failed", "cancelled") else None
