"""`flask sessions backup PATH` through Flask's CLI runner: a checked copy of the live SQLite database.

The copy is taken while sessions keep arriving over HTTP, then opened on its own with SQLite and
restored into a fresh app, which must answer as the original did. A refused backup exits non-zero,
writes nothing and leaves no partial file; on PostgreSQL the command points at pg_dump instead.
"""
import re
import shutil
import threading

import pytest
from conftest import SUBMISSION, finished, status_of, wait_for

from app import create_app
from app.database import sqlite_dbapi
from app.extensions import db
from app.runner import start_runner

BACKED_UP = re.compile(r"Backed up (\d+) sessions .* integrity check ok\.")


def backup(cli, path):
    return cli.invoke(args=["sessions", "backup", str(path)])


def count_sessions(database):
    return database.query("SELECT count(*) FROM sessions")[0][0]


class Submitter(threading.Thread):
    """Submits sessions over HTTP through a client of its own, one after another, until stopped."""

    def __init__(self, app):
        super().__init__(daemon=True)
        self.client, self.accepted, self.refusals = app.test_client(), 0, []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            response = self.client.post("/api/submit-requirements", json=SUBMISSION)
            if response.status_code != 202:
                self.refusals.append((response.status_code, response.get_data(as_text=True)))
                return
            self.accepted += 1


@pytest.mark.sqlite_only("the online backup API copies a SQLite file")
def test_a_backup_taken_while_sessions_arrive_is_one_consistent_checked_file(app, cli, store, database, tmp_path):
    # Given a database of some megabytes, so copying and checking it takes a while
    for _ in range(40):
        store.create("x" * 200_000, SUBMISSION["requirements"])
    target = tmp_path / "backup.db"
    submitter = Submitter(app)
    submitter.start()
    try:
        wait_for(lambda: submitter.accepted >= 3 or submitter.refusals)
        before, accepted_before = count_sessions(database), submitter.accepted

        # When it is backed up while the submitter keeps writing
        result = backup(cli, target)

        accepted_during = submitter.accepted - accepted_before
    finally:
        submitter.stopping.set()
        submitter.join(timeout=30)
    after = count_sessions(database)

    # Then the writes really overlapped the command, and none of them failed
    assert submitter.refusals == []
    assert accepted_during > 0, "no session was submitted while the backup ran: the test proved nothing"
    assert result.exit_code == 0, result.output
    reported = BACKED_UP.search(result.output)
    assert reported, result.output
    # And the copy is one self-contained file, whole, holding the database as of one instant in between
    assert not (tmp_path / "backup.db-wal").exists()
    copy = sqlite_dbapi().connect(str(target))
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        in_copy = copy.execute("SELECT count(*) FROM sessions").fetchone()[0]
    finally:
        copy.close()
    assert before <= in_copy <= after, (before, in_copy, after)
    assert in_copy == int(reported.group(1))
    assert in_copy < after, "every write landed before the copy's instant: the copy did not overlap them"
    assert list(tmp_path.glob("*.partial-*")) == []


@pytest.mark.sqlite_only("the online backup API copies a SQLite file")
@pytest.mark.pipeline(["agents:First", "agents:Second"])
def test_a_restored_backup_answers_like_the_original(app, cli, client, tmp_path):
    # Given a session that ran to completion, and a queued one, backed up
    done = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    start_runner(app)
    assert wait_for(lambda: finished(client, done))["status"] == "completed"
    app.extensions["report_runner"].stop(timeout=10)
    waiting = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    assert backup(cli, tmp_path / "backup.db").exit_code == 0

    # When the backup is copied into place and an app started on it
    restored_path = tmp_path / "restored" / "app.db"
    restored_path.parent.mkdir()
    shutil.copy(tmp_path / "backup.db", restored_path)
    restored = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{restored_path}",
                           "PIPELINE": ["agents:First", "agents:Second"]})
    try:
        again = restored.test_client()

        # Then both sessions read exactly as before, report and all, and the operator's listing works
        for session_id in (done, waiting):
            assert status_of(again, session_id) == status_of(client, session_id)
        report = again.get(f"/api/reports/{done}")
        assert report.status_code == 200
        assert report.get_json() == client.get(f"/api/reports/{done}").get_json()
        listing = restored.test_cli_runner().invoke(args=["sessions", "list"])
        assert listing.exit_code == 0, listing.output
        assert [line.split()[:2] for line in listing.output.splitlines()[:-1]] == [
            [waiting, "queued"], [done, "completed"]]
        assert listing.output.splitlines()[-1] == "2 sessions shown."
    finally:
        with restored.app_context():
            db.engine.dispose()


@pytest.mark.sqlite_only("PostgreSQL refuses before looking at PATH")
def test_a_backup_over_an_existing_file_is_refused_and_leaves_it_untouched(cli, tmp_path):
    existing = tmp_path / "backups" / "monday.db"
    existing.parent.mkdir()
    existing.write_bytes(b"last week's backup")

    result = backup(cli, existing)

    assert result.exit_code != 0
    assert "already exists" in result.output and "Traceback" not in result.output
    assert existing.read_bytes() == b"last week's backup"
    assert [p.name for p in existing.parent.iterdir()] == ["monday.db"]


@pytest.mark.sqlite_only("PostgreSQL refuses before looking at PATH")
def test_a_backup_into_a_missing_folder_is_refused_and_writes_nothing(cli, tmp_path):
    result = backup(cli, tmp_path / "no-such-folder" / "backup.db")

    assert result.exit_code != 0
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "no-such-folder").exists()
    assert list(tmp_path.rglob("*.partial-*")) == []


@pytest.mark.postgres_only("the command copies SQLite files only")
def test_on_postgresql_the_backup_is_refused_with_advice_to_use_pg_dump(cli, tmp_path):
    result = backup(cli, tmp_path / "backup.db")

    assert result.exit_code != 0
    assert result.output.startswith("Error:") and "pg_dump" in result.output
    assert list(tmp_path.iterdir()) == []
