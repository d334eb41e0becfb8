"""Fixtures: an app on a freshly migrated SQLite file per test, its client and CLI runner."""
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # "agents:First" resolves in this process, as in the servers tests start

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory):
    """One database migrated with `flask db upgrade`'s own code; each test gets a copy."""
    import flask_migrate

    path = tmp_path_factory.mktemp("template") / "template.db"
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}"})
    with app.app_context():
        flask_migrate.upgrade()
        db.engine.dispose()
    return path


@pytest.fixture
def db_path(tmp_path, migrated_template):
    path = tmp_path / "app.db"
    shutil.copy(migrated_template, path)
    return path


@pytest.fixture
def app(db_path, request):
    marker = request.node.get_closest_marker("pipeline")
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_path}"}
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
