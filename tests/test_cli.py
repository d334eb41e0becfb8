"""`flask sessions ...` through Flask's CLI runner: cleanup, list, show and import-json.

Sessions are made with the store; the effects of a crash or of time passing (an old `updated_at`,
a session left `generating` by a dead process) are written into the rows directly, as they would
be found on disk. A refused command must exit non-zero with one `Error:` line and change nothing.
"""
import json
from datetime import timedelta

import pytest
from conftest import SUBMISSION, finished, wait_for
from sqlalchemy import event, func, select, update

from app.extensions import db
from app.models import ReportSession, Step, utcnow
from app.runner import start_runner


def sessions(cli, *args):
    return cli.invoke(args=["sessions", *args])


def new_session(store, topic="Electric Vehicle Market Analysis"):
    return store.create(SUBMISSION["user_request"], dict(SUBMISSION["requirements"], topic=topic))


def set_state(app, session_id, status, days_ago, **values):
    """Put a session in `status`, last updated `days_ago` days ago, as a crash or time would leave it."""
    when = utcnow() - timedelta(days=days_ago)
    if status in ("completed", "failed", "cancelled"):
        values.setdefault("finished_at", when)
    with app.app_context():
        db.session.execute(update(ReportSession).where(ReportSession.id == session_id)
                           .values(status=status, updated_at=when, **values))
        db.session.commit()


def session_ids(app):
    with app.app_context():
        return set(db.session.execute(select(ReportSession.id)).scalars())


def count_rows(app):
    with app.app_context():
        return (db.session.execute(select(func.count()).select_from(ReportSession)).scalar_one(),
                db.session.execute(select(func.count()).select_from(Step)).scalar_one())


def steps_of(app, session_id):
    with app.app_context():
        return list(db.session.execute(select(Step.name).where(Step.session_id == session_id)
                                       .order_by(Step.position)).scalars())


def assert_refused(result):
    """Exited non-zero through click, not an uncaught exception; returns its one `Error:` line."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def assert_one_line(result):
    """Refused with nothing but its one `Error:` line (no usage text: the arguments were fine)."""
    message = assert_refused(result)
    assert result.stderr.strip() == message, result.stderr
    assert result.stdout == ""
    return message


@pytest.fixture
def population(app, store):
    """Finished sessions old and fresh, and active ones that are old too; name -> session id."""
    ids = {name: new_session(store, topic=name) for name in (
        "old_completed", "old_failed", "old_cancelled", "fresh_completed", "fresh_cancelled",
        "old_queued", "old_generating")}
    set_state(app, ids["old_completed"], "completed", days_ago=30)
    set_state(app, ids["old_failed"], "failed", days_ago=8, error="the data source refused the request")
    set_state(app, ids["old_cancelled"], "cancelled", days_ago=7.5)
    set_state(app, ids["fresh_completed"], "completed", days_ago=1)
    set_state(app, ids["fresh_cancelled"], "cancelled", days_ago=0.01)
    set_state(app, ids["old_queued"], "queued", days_ago=60)
    # Left mid-run by a process that died weeks ago: its lease long expired.
    set_state(app, ids["old_generating"], "generating", days_ago=60, current_agent="writer",
              lease_owner="dead-host:4242", lease_expires_at=0.0)
    return ids


OLD_FINISHED = {"old_completed", "old_failed", "old_cancelled"}
ACTIVE = {"old_queued", "old_generating"}


# -- cleanup ----------------------------------------------------------------------------------

def test_cleanup_removes_only_finished_sessions_older_than_the_given_days(app, cli, population):
    result = sessions(cli, "cleanup", "--days", "7")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Removed 3 sessions (finished and older than 7 days)."
    assert session_ids(app) == {population[name] for name in population if name not in OLD_FINISHED}


def test_cleanup_dry_run_counts_what_it_would_remove_and_deletes_nothing(app, cli, population):
    before = count_rows(app)

    result = sessions(cli, "cleanup", "--days", "7", "--dry-run")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("Would remove 3 sessions (finished and older than 7 days). "
                                     "Dry run: nothing was deleted.")
    assert count_rows(app) == before
    assert session_ids(app) == set(population.values())


def test_cleanup_with_zero_days_removes_every_finished_session_but_never_an_active_one(app, cli, population):
    result = sessions(cli, "cleanup", "--days", "0")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Removed 5 sessions (finished)."
    assert session_ids(app) == {population[name] for name in ACTIVE}


def test_cleanup_when_nothing_is_old_enough_removes_nothing(app, cli, population):
    before = count_rows(app)

    result = sessions(cli, "cleanup", "--days", "90")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Removed 0 sessions (finished and older than 90 days)."
    assert count_rows(app) == before


def test_cleanup_removes_the_steps_of_removed_sessions_and_keeps_the_others(app, cli, store):
    # Given two sessions that each recorded a step before failing: one long ago, one today.
    finished = {}
    for name, days_ago in (("old", 10), ("fresh", 0.5)):
        session_id = new_session(store, topic=name)
        claim = store.claim("test-owner")
        assert claim.session_id == session_id
        store.commit_step(claim, store.step_names[0], {"plan": name}, utcnow())
        store.fail(claim, store.step_names[1], "the data source refused the request")
        set_state(app, session_id, "failed", days_ago=days_ago)
        finished[name] = session_id
    assert steps_of(app, finished["old"]) == [store.step_names[0]]

    # When the old one is cleaned up
    result = sessions(cli, "cleanup", "--days", "7")

    # Then its step rows went with it (ON DELETE CASCADE), and the fresh one keeps its own.
    assert result.exit_code == 0, result.output
    assert steps_of(app, finished["old"]) == []
    assert steps_of(app, finished["fresh"]) == [store.step_names[0]]
    assert count_rows(app) == (1, 1)


@pytest.mark.parametrize("total", [6, 7])
def test_cleanup_in_small_batches_removes_every_old_session(app, store, total):
    # Given more old finished sessions than one batch (an exact multiple, and one over), and an active one
    old = [new_session(store) for _ in range(total)]
    for session_id in old:
        set_state(app, session_id, "completed", days_ago=10)
    active = new_session(store)
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM SESSIONS"):
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        # When cleaned up three at a time
        removed = store.cleanup(7, batch_size=3)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)

    # Then all are gone, in one DELETE per batch of three
    assert removed == total
    assert session_ids(app) == {active}
    assert len(statements) == -(-total // 3)


@pytest.mark.parametrize("args", [["--days", "-1"], ["--days", "a week"], []],
                         ids=["negative", "not a number", "missing"])
def test_cleanup_refuses_a_missing_or_invalid_age_and_deletes_nothing(app, cli, population, args):
    before = count_rows(app)

    result = sessions(cli, "cleanup", *args)

    message = assert_refused(result)
    assert "--days" in message
    assert count_rows(app) == before


@pytest.mark.parametrize("days", ["nan", "inf", "1e9", "1000000"])
def test_cleanup_refuses_an_age_it_cannot_compute_a_cutoff_from(app, cli, population, days):
    """click.FloatRange(min=0) lets these through; now - timedelta(days=...) then raises."""
    before = count_rows(app)

    result = sessions(cli, "cleanup", "--days", days)

    message = assert_refused(result)
    assert "--days" in message
    assert count_rows(app) == before


# -- list -------------------------------------------------------------------------------------

def test_list_shows_every_session_newest_first(cli, store):
    ids = [new_session(store, topic=f"Topic {i}") for i in range(3)]

    result = sessions(cli, "list")

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ids[::-1]
    assert lines[0].split()[1] == "queued" and lines[0].endswith("Topic 2")
    assert lines[-1] == "3 sessions shown."


def test_list_filters_by_status(cli, store):
    keep = new_session(store)
    cancelled = new_session(store)
    store.cancel(cancelled)

    result = sessions(cli, "list", "--status", "cancelled")

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [[cancelled, "cancelled"]]
    assert keep not in result.output
    assert lines[-1] == "1 session shown."


def test_list_of_an_empty_database_says_so(cli):
    result = sessions(cli, "list")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "0 sessions shown."


def test_list_refuses_an_unknown_status(cli, store):
    new_session(store)

    result = sessions(cli, "list", "--status", "sleeping")

    assert "--status" in assert_refused(result)


# -- show -------------------------------------------------------------------------------------

def test_show_prints_the_status_document_as_json(cli, store):
    session_id = new_session(store)

    result = sessions(cli, "show", session_id)

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["session_id"] == session_id
    assert document["status"] == "queued"
    assert document["report_requirements"]["topic"] == "Electric Vehicle Market Analysis"


def test_show_of_an_unknown_session_fails_with_one_line(cli, store):
    new_session(store)

    result = sessions(cli, "show", "280bd232-92c3-46cf-951f-13e1a6a097d7")

    message = assert_one_line(result)
    assert message == "Error: Session '280bd232-92c3-46cf-951f-13e1a6a097d7' not found."


# -- import-json ------------------------------------------------------------------------------

COMPLETED_ID = "0b7a3e52-5a8c-4c55-9a4e-2f1c7d0c9e11"
GENERATING_ID = "280bd232-92c3-46cf-951f-13e1a6a097d7"
FAILED_ID = "6f1d2c3b-8e7a-4b5c-9d0e-1a2b3c4d5e6f"
PENDING_ID = "9c8b7a65-4321-4fed-8cba-0987654321ab"


def old_session(session_id, status, completed_tasks, current_agent, started_at, updated_at, topic):
    return {
        "session_id": session_id,
        "status": status,
        "user_request": f"{topic} for investors",
        "report_requirements": {"topic": topic, "page_count": 20, "source_count": 10},
        "current_agent": current_agent,
        "completed_tasks": completed_tasks,
        "started_at": started_at,
        "updated_at": updated_at,
    }


def seed_states():
    """A states.json in the old service's format (see the seed's example), four sessions."""
    return {
        COMPLETED_ID: old_session(COMPLETED_ID, "completed", ["planner", "data_collection", "writer"], None,
                                  "2025-12-14T17:00:00", "2025-12-14T17:12:30", "Solar Panel Adoption"),
        GENERATING_ID: old_session(GENERATING_ID, "generating", ["data_collection", "api_research"],
                                   "analyst", "2025-12-14T18:45:00", "2025-12-14T18:46:30",
                                   "Electric Vehicle Market Analysis"),
        FAILED_ID: old_session(FAILED_ID, "failed", ["data_collection"], "analyst",
                               "2025-12-13T09:00:00", "2025-12-13T09:03:00", "Battery Recycling"),
        PENDING_ID: old_session(PENDING_ID, "pending", [], None,
                                "2025-12-14T19:00:00", "2025-12-14T19:00:00", "Hydrogen Trucks"),
    }


def write_states(tmp_path, data, name="states.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return str(path)


@pytest.fixture
def states_file(tmp_path):
    return write_states(tmp_path, seed_states())


def test_import_prints_how_many_sessions_it_imported_and_requeued(app, cli, states_file):
    result = sessions(cli, "import-json", states_file)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("Imported 4 sessions (2 unfinished ones queued to run again); "
                                     "skipped 0 already present.")
    assert session_ids(app) == {COMPLETED_ID, GENERATING_ID, FAILED_ID, PENDING_ID}


def test_imported_completed_session_keeps_its_status_times_and_completed_tasks(cli, client, states_file):
    sessions(cli, "import-json", states_file)

    status = client.get(f"/api/report-status/{COMPLETED_ID}").get_json()

    assert status["status"] == "completed"
    assert status["completed_tasks"] == ["planner", "data_collection", "writer"]
    assert status["progress"] == 1.0
    assert status["user_request"] == "Solar Panel Adoption for investors"
    assert status["report_requirements"] == {"topic": "Solar Panel Adoption", "page_count": 20,
                                             "source_count": 10}
    assert status["started_at"] == "2025-12-14T17:00:00.000Z"
    assert status["updated_at"] == status["finished_at"] == "2025-12-14T17:12:30.000Z"


def test_imported_completed_session_says_it_has_no_stored_report(cli, client, states_file):
    sessions(cli, "import-json", states_file)

    response = client.get(f"/api/reports/{COMPLETED_ID}")

    assert response.status_code == 404
    assert "no stored report" in response.get_json()["detail"]


def test_imported_generating_session_is_queued_to_run_again_from_the_start(app, cli, client, states_file):
    sessions(cli, "import-json", states_file)

    status = client.get(f"/api/report-status/{GENERATING_ID}").get_json()

    assert status["status"] == "queued"
    assert status["completed_tasks"] == []
    assert status["current_agent"] is None
    assert status["finished_at"] is None
    assert status["progress"] == 0
    assert status["started_at"] == "2025-12-14T18:45:00.000Z"
    assert steps_of(app, GENERATING_ID) == []


def test_imported_failed_session_stays_failed_with_its_completed_tasks(cli, client, states_file):
    sessions(cli, "import-json", states_file)

    status = client.get(f"/api/report-status/{FAILED_ID}").get_json()

    assert status["status"] == "failed"
    assert status["completed_tasks"] == ["data_collection"]
    assert status["finished_at"] == "2025-12-13T09:03:00.000Z"


def test_import_of_an_old_status_alias_maps_it_to_ours(cli, client, states_file):
    sessions(cli, "import-json", states_file)

    status = client.get(f"/api/report-status/{PENDING_ID}").get_json()

    assert status["status"] == "queued"


def test_importing_the_same_file_twice_imports_nothing_the_second_time(app, cli, states_file):
    sessions(cli, "import-json", states_file)
    before = count_rows(app)

    result = sessions(cli, "import-json", states_file)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("Imported 0 sessions (2 unfinished ones queued to run again); "
                                     "skipped 4 already present.")
    assert count_rows(app) == before


def test_import_skips_a_session_already_present_and_imports_the_rest(app, cli, client, tmp_path):
    first = write_states(tmp_path, {COMPLETED_ID: seed_states()[COMPLETED_ID]}, name="first.json")
    sessions(cli, "import-json", first)

    result = sessions(cli, "import-json", write_states(tmp_path, seed_states()))

    assert result.exit_code == 0, result.output
    assert "Imported 3 sessions" in result.output and "skipped 1 already present" in result.output
    status = client.get(f"/api/report-status/{COMPLETED_ID}").get_json()
    assert status["completed_tasks"] == ["planner", "data_collection", "writer"]


def test_a_retried_imported_failed_session_runs_the_pipeline_from_the_start(app, cli, client, states_file):
    """The old store kept no step outputs, so nothing can be resumed: every step runs."""
    sessions(cli, "import-json", states_file)

    assert client.post(f"/api/sessions/{FAILED_ID}/retry").status_code == 202
    start_runner(app)
    status = wait_for(lambda: finished(client, FAILED_ID))

    assert status["status"] == "completed", status["error"]
    assert status["completed_tasks"] == app.extensions["report_store"].step_names
    assert client.get(f"/api/reports/{FAILED_ID}").status_code == 200


def _with(session_id, **changes):
    data = seed_states()
    data[session_id] = dict(data[session_id], **changes)
    return data


BAD_FILES = {
    "truncated JSON": (json.dumps(seed_states(), indent=2)[:300], "not a valid sessions file"),
    "top level is a list": (list(seed_states().values()), "expected a JSON object"),
    "one unknown status": (_with(FAILED_ID, status="paused"), "unknown status 'paused'"),
    "one bad timestamp": (_with(FAILED_ID, updated_at="yesterday at noon"), "invalid updated_at"),
    "one missing timestamp": (_with(GENERATING_ID, started_at=None), "has no started_at"),
    "one id that is not a UUID": ({"not-a-uuid": dict(seed_states()[FAILED_ID], session_id="not-a-uuid"),
                                   **seed_states()}, "invalid session_id"),
    "one without a user_request": (_with(COMPLETED_ID, user_request=None), "user_request"),
    "one with repeated completed_tasks": (_with(COMPLETED_ID, completed_tasks=["planner", "planner"]),
                                          "invalid completed_tasks"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_import_of_an_invalid_file_fails_with_one_line_and_imports_nothing(app, cli, store, tmp_path, case):
    content, reason = BAD_FILES[case]
    path = write_states(tmp_path, content)
    new_session(store)  # something already there, which must stay exactly as it was
    before = count_rows(app)

    result = sessions(cli, "import-json", path)

    message = assert_one_line(result)
    assert "nothing imported" in message and reason in message, message
    assert count_rows(app) == before


def test_import_of_a_file_that_is_not_utf8_fails_with_one_line(app, cli, tmp_path):
    path = tmp_path / "states.json"
    path.write_bytes(b"\xff\xfe\x00{not json")

    result = sessions(cli, "import-json", str(path))

    message = assert_one_line(result)
    assert "nothing imported" in message, message
    assert count_rows(app) == (0, 0)


def test_import_of_a_missing_file_is_a_usage_error(cli, tmp_path):
    result = sessions(cli, "import-json", str(tmp_path / "nowhere.json"))

    message = assert_refused(result)
    assert result.exit_code == 2
    assert "does not exist" in message, message


@pytest.mark.sqlite_only("reads SQLite's query plan (EXPLAIN QUERY PLAN) of the batch delete")
def test_cleanup_batches_delete_through_the_primary_key(app, store):
    """A batch delete that SQLite plans through the status index walks every finished row: at
    1,000,000 sessions that made cleanup quadratic (454 ms a batch). Keep it on the primary key."""
    from sqlalchemy import event

    for _ in range(600):  # a full batch of 500 ids is what tipped SQLite's planner to the status index
        store.cancel(store.create("r", {"topic": "t"}))
    deletes = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM SESSIONS"):
            deletes.append((statement, parameters))

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            assert store.cleanup(0) == 600
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
        assert deletes
        with db.engine.connect() as conn:
            for statement, parameters in deletes:
                plan = " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                                        parameters))
                assert "sqlite_autoindex_sessions_1" in plan or "PRIMARY KEY" in plan, plan
