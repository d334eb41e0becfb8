"""The durable-execution core in one process: claims, fenced step commits, recovery, cancel, failures.

Recovery tests set rows to the state a crash leaves behind, then run the store or the runner
and look at the rows, as DBOS tests its recovery.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from conftest import SUBMISSION, finished, read_agent_log, status_of, wait_for
from sqlalchemy import select, update

from app.extensions import db
from app.models import ReportSession, Step, utcnow
from app.runner import start_runner
from app.runner.executor import owner_is_dead, process_owner_id
from app.runner.store import StepResult

FAST = ["agents:First", "agents:Second", "agents:Third"]


def rows(app, model, **where):
    with app.app_context():
        query = select(model).filter_by(**where)
        if model is Step:
            query = query.order_by(Step.position)
        return db.session.execute(query).scalars().all()


def dead_owner():
    """The owner id of a process that has exited: what a kill -9 leaves in lease_owner."""
    code = "from app.runner.executor import process_owner_id; print(process_owner_id())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(__file__))).stdout.strip()


# -- the default pipeline, end to end -----------------------------------------------------------

def test_default_pipeline_produces_a_cited_report(app, client):
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    status = wait_for(lambda: finished(client, session_id))

    assert status["status"] == "completed", status["error"]
    assert status["completed_tasks"] == ["planner", "data_collection", "api_research", "analyst", "writer",
                                         "reviewer", "publisher"]
    assert status["progress"] == 1.0 and status["current_agent"] is None
    assert status["report_url"] == f"/api/reports/{session_id}"
    report = client.get(status["report_url"]).get_json()
    assert report["title"] == "Electric Vehicle Market Analysis"
    assert "## Executive summary" in report["markdown"] and "## References" in report["markdown"]
    assert "[1]" in report["markdown"]
    assert len(report["sources"]) == SUBMISSION["requirements"]["source_count"]
    assert all(s["location"].startswith("library:") and len(s["content_hash"]) == 64 for s in report["sources"])
    assert report["downloads"]["pdf"] == f"/api/reports/{session_id}.pdf"
    assert report["review"]["findings"] and report["tables"] and report["charts"]


@pytest.mark.pipeline(FAST)
def test_steps_are_recorded_once_in_order_with_their_outputs(app, client, agent_log):
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    wait_for(lambda: finished(client, session_id))

    steps = rows(app, Step, session_id=session_id)
    assert [(s.name, s.position) for s in steps] == [("first", 0), ("second", 1), ("third", 2)]
    assert steps[2].output["saw"] == ["first", "second"]
    assert [step for _, step, _ in read_agent_log(agent_log)] == ["first", "second", "third"]


@pytest.mark.pipeline(FAST)
def test_one_runner_thread_works_through_a_backlog_one_session_after_another(app, client, agent_log):
    """A thread that finishes a session claims the next itself; each still runs once, in order."""
    ids = [client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"] for _ in range(5)]
    app.config["RUNNER_THREADS"] = 1
    start_runner(app)

    assert all(wait_for(lambda i=i: finished(client, i))["status"] == "completed" for i in ids)

    ran = [(session, step) for session, step, _ in read_agent_log(agent_log)]
    assert ran == [(i, step) for i in ids for step in ("first", "second", "third")]  # oldest first, no overlap


@pytest.mark.pipeline(["agents:First", "agents:Explode", "agents:Third"])
def test_an_agent_that_raises_fails_the_session_with_the_step_and_reason(app, client, agent_log):
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    status = wait_for(lambda: finished(client, session_id))

    assert status["status"] == "failed"
    assert status["failed_step"] == "explode" and status["current_agent"] == "explode"
    assert "RuntimeError: the data source refused the request" in status["error"]
    assert status["completed_tasks"] == ["first"]
    assert "third" not in [step for _, step, _ in read_agent_log(agent_log)]


@pytest.mark.pipeline(["agents:First", "agents:Unserialisable"])
def test_output_that_cannot_be_stored_fails_the_step_that_made_it(app, client):
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    status = wait_for(lambda: finished(client, session_id))

    assert status["status"] == "failed" and status["failed_step"] == "unserialisable"
    assert "not JSON serializable" in status["error"]


@pytest.mark.pipeline(["agents:First", "agents:Explode", "agents:Echo"])
def test_retry_resumes_from_the_first_unfinished_step(app, client, agent_log, monkeypatch):
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    wait_for(lambda: finished(client, session_id))

    # The fault goes away (the agent is swapped in this process), and the user retries.
    explode = app.extensions["report_pipeline"][1]
    monkeypatch.setattr(explode, "run", lambda context: {"recovered": True})
    assert client.post(f"/api/sessions/{session_id}/retry").status_code == 202
    status = wait_for(lambda: finished(client, session_id))

    assert status["status"] == "completed" and status["error"] is None
    assert [step for _, step, _ in read_agent_log(agent_log)].count("first") == 1
    echo = rows(app, Step, session_id=session_id)[2].output
    assert echo["outputs"]["explode"] == {"recovered": True}


# -- the store: claims, fences, recovery ---------------------------------------------------------

@pytest.mark.pipeline(FAST)
def test_claim_takes_the_oldest_queued_session_once(store, client):
    first = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    second = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    a, b, c = store.claim("owner-a"), store.claim("owner-b"), store.claim("owner-c")

    assert (a.session_id, b.session_id, c) == (first, second, None)
    assert status_of(client, first)["status"] == "generating"
    assert status_of(client, first)["current_agent"] == "first"


@pytest.mark.pipeline(FAST)
def test_a_step_commit_without_the_lease_records_nothing(app, store, client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    claim = store.claim("owner-a")

    result = store.commit_step(replace(claim, owner="owner-b"), "first", {"x": 1}, utcnow())

    assert result is StepResult.LOST
    assert rows(app, Step, session_id=session_id) == []
    assert store.commit_step(claim, "first", {"x": 1}, utcnow()) is StepResult.CONTINUE
    assert status_of(client, session_id)["completed_tasks"] == ["first"]


@pytest.mark.pipeline(FAST)
def test_an_expired_lease_is_resumed_from_the_last_finished_step(app, store, client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    crashed = store.claim("crashed")
    store.commit_step(crashed, "first", {"done": "first"}, utcnow())
    with app.app_context():  # the crashed process never renewed its lease
        db.session.execute(update(ReportSession).values(lease_expires_at=time.time() - 1))
        db.session.commit()

    claim = store.claim("survivor")

    assert claim.session_id == session_id and claim.resumed
    assert claim.outputs == {"first": {"done": "first"}}
    status = status_of(client, session_id)
    assert status["attempts"] == 1 and status["current_agent"] == "second"
    # The old owner wakes up and tries to record its step: fenced out.
    assert store.commit_step(crashed, "second", {}, utcnow()) is StepResult.LOST


@pytest.mark.pipeline(FAST)
def test_a_lease_handed_back_is_resumed_without_counting_an_attempt(store, client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    store.claim("stopping")
    store.release("stopping")

    claim = store.claim("next")

    assert claim.session_id == session_id and not claim.resumed
    assert status_of(client, session_id)["attempts"] == 0


@pytest.mark.pipeline(FAST)
def test_recovery_gives_up_after_max_attempts_with_the_reason(app, store, client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    for attempt in range(store.max_attempts + 1):
        claim = store.claim(f"crash-{attempt}")
        assert claim is not None and claim.session_id == session_id
        with app.app_context():
            db.session.execute(update(ReportSession).values(lease_expires_at=0))
            db.session.commit()

    assert store.claim("one-too-many") is None
    status = status_of(client, session_id)
    assert status["status"] == "failed" and status["failed_step"] == "first"
    assert f"REPORTS_MAX_ATTEMPTS={store.max_attempts}" in status["error"]


@pytest.mark.pipeline(FAST)
def test_runner_resumes_sessions_of_a_dead_process_without_waiting_for_expiry(app, client, agent_log):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    store = app.extensions["report_store"]
    owner = dead_owner()
    claim = store.claim(owner)
    store.commit_step(claim, "first", {"step": "first"}, utcnow())
    with app.app_context():  # a lease that would last another hour
        db.session.execute(update(ReportSession).values(lease_expires_at=time.time() + 3600))
        db.session.commit()

    start_runner(app)
    status = wait_for(lambda: finished(client, session_id))

    assert status["status"] == "completed" and status["attempts"] == 1
    assert [step for _, step, _ in read_agent_log(agent_log)] == ["second", "third"]


@pytest.mark.pipeline(FAST)
def test_cancel_of_a_running_session_waits_for_the_step_boundary(app, store, client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    claim = store.claim("worker")

    response = client.post(f"/api/sessions/{session_id}/cancel")
    assert response.status_code == 202
    assert response.get_json()["cancel_requested"] is True
    assert response.get_json()["status"] == "generating"

    assert store.commit_step(claim, "first", {}, utcnow()) is StepResult.CANCELLED
    status = status_of(client, session_id)
    assert status["status"] == "cancelled" and status["completed_tasks"] == ["first"]
    assert rows(app, ReportSession, id=session_id)[0].lease_owner is None


@pytest.mark.pipeline(FAST)
def test_deleting_a_running_session_stops_its_runner(app, store, client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    claim = store.claim("worker")

    assert client.delete(f"/api/sessions/{session_id}").status_code == 204

    assert store.commit_step(claim, "first", {}, utcnow()) is StepResult.LOST
    assert rows(app, Step, session_id=session_id) == []


@pytest.mark.pipeline(FAST)
def test_heartbeat_extends_only_this_owners_leases(app, store, client):
    mine = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    theirs = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    store.claim("me")
    store.claim("them")
    with app.app_context():
        db.session.execute(update(ReportSession).values(lease_expires_at=1.0))
        db.session.commit()

    assert store.heartbeat("me") == 1

    leases = {r.id: r.lease_expires_at for r in rows(app, ReportSession)}
    assert leases[mine] > time.time() and leases[theirs] == 1.0


@pytest.mark.pipeline(FAST)
def test_stop_hands_every_lease_back(app, client, monkeypatch):
    monkeypatch.setenv("TEST_AGENT_DELAY", "0.3")
    runner = start_runner(app)
    ids = [client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"] for _ in range(2)]
    wait_for(lambda: all(status_of(client, i)["status"] == "generating" for i in ids))

    runner.stop(timeout=10)

    sessions = rows(app, ReportSession)
    assert all(s.lease_owner is None for s in sessions)
    assert all(s.status in ("generating", "completed") for s in sessions)


# -- owners ---------------------------------------------------------------------------------

def test_owner_ids_prove_a_dead_local_process_and_never_a_live_or_remote_one():
    host, space, _pid, _start, nonce = process_owner_id().rsplit(":", 4)
    assert owner_is_dead(dead_owner())
    assert not owner_is_dead(process_owner_id())  # this very process
    # Another machine (another kernel boot), with the same host name and a pid that is free here.
    assert not owner_is_dead(f"{host}:0b0e1d00-0000-4000-8000-000000000000/4026531836:{2**22 + 7}:1:{nonce}")
    assert not owner_is_dead(f"{host}:-:{2**22 + 7}:1:{nonce}")  # a system that cannot say which
    assert not owner_is_dead("not-an-owner-id")


def test_a_reused_pid_does_not_make_a_dead_owner_look_alive():
    host, space, _pid, _start, nonce = process_owner_id().rsplit(":", 4)
    parent = os.getppid()
    assert owner_is_dead(f"{host}:{space}:{parent}:1:{nonce}")  # the parent is alive, but started at another time


def in_own_pid_namespace(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run python code as a container would: same host name and kernel, its own process ids."""
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))


needs_unshare = pytest.mark.skipif(
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode != 0,
    reason="unshare --pid is not permitted here (needs root or user namespaces)")


@needs_unshare
def test_processes_in_two_pid_namespaces_never_take_each_other_for_dead():
    """Same host name, same kernel: pids are still not comparable, so neither side may prove the other dead."""
    theirs = in_own_pid_namespace("from app.runner.executor import process_owner_id; print(process_owner_id())")
    assert theirs.returncode == 0, theirs.stderr
    their_owner = theirs.stdout.strip()
    assert their_owner.split(":")[0] == process_owner_id().split(":")[0]  # the same host name
    assert not owner_is_dead(their_owner)  # it has exited, but its pid means nothing here

    # Our pid does not exist in their namespace, which a host-name check would have taken for death.
    ours = process_owner_id()
    verdict = in_own_pid_namespace("import sys; from app.runner.executor import owner_is_dead; "
                                   "print(owner_is_dead(sys.argv[1]))", ours)
    assert verdict.returncode == 0, verdict.stderr
    assert verdict.stdout.strip() == "False"


def test_status_document_renders_every_field_as_json(store):
    now = utcnow()
    row = dict(id="s", status="generating", user_request="r", requirements={"topic": "t"}, current_agent="writer",
               created_at=now - timedelta(seconds=5), updated_at=now, finished_at=None, error=None,
               failed_step=None, cancel_requested=False, attempts=0, progress_message="collected 2 of 3 sources",
               status_fields={"review": {"passed": True}})

    doc = json.loads(store.render(row, ["planner", "data_collection"]))

    assert doc["progress"] == round(2 / len(store.step_names), 4)
    assert doc["started_at"].endswith("Z") and doc["report_url"] is None
    assert doc["message"] == "collected 2 of 3 sources"
    assert doc["review"] == {"passed": True}


def test_a_killed_but_unreaped_process_counts_as_dead():
    """After kill -9 a worker lingers as a zombie until its parent reaps it; it holds nothing."""
    child = subprocess.Popen([sys.executable, "-c",
                              "from app.runner.executor import process_owner_id; print(process_owner_id(), flush=True);"
                              "import time; time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    owner = child.stdout.readline().strip()
    assert not owner_is_dead(owner)

    os.kill(child.pid, 9)
    wait_for(lambda: open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split()[0] == "Z")

    assert owner_is_dead(owner)
    child.wait()


@pytest.mark.pipeline(FAST)
def test_status_counts_follow_every_kind_of_change(app, store, client, cli, tmp_path):
    """The counts behind total_sessions move in the same transaction as the rows they count."""
    from sqlalchemy import func

    ids = [client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"] for _ in range(6)]
    claim = store.claim("w")                                                             # queued -> generating
    store.commit_step(claim, "first", {}, utcnow())
    store.fail(claim, "second", "boom")                                                  # -> failed
    client.post(f"/api/sessions/{ids[1]}/cancel")                                         # -> cancelled
    client.post(f"/api/sessions/{ids[1]}/retry")                                          # -> queued
    client.post(f"/api/sessions/{ids[2]}/cancel")
    client.delete(f"/api/sessions/{ids[3]}")                                              # gone
    claim = store.claim("w")
    for name in ("first", "second", "third"):
        store.commit_step(claim, name, {}, utcnow())                                     # -> completed
    cli.invoke(args=["sessions", "cleanup", "--days", "0"])                              # finished ones gone

    with app.app_context():
        actual = dict(db.session.execute(select(ReportSession.status, func.count())
                                         .group_by(ReportSession.status)).all())
    counts = app.extensions["report_reads"].counts()
    assert counts == {status: actual.get(status, 0) for status in counts}
    assert client.get("/api/sessions").get_json()["total_sessions"] == sum(actual.values()) == 2


def test_compiled_statements_read_and_write_what_sqlalchemy_does(app, store, client):
    """The step-commit path bypasses SQLAlchemy's execution layer, not its types: same values either way."""
    from app.runner.compiled import CompiledStatement
    from app.runner.store import _ROW

    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    claim = store.claim("w")
    store.commit_step(claim, store.step_names[0], {"nested": [1, "two", None]}, utcnow())
    with app.app_context(), db.engine.connect() as conn:
        expected = dict(conn.execute(_ROW, {"session_id": session_id}).mappings().first())
        found = CompiledStatement(_ROW, db.engine.dialect).first(conn, {"session_id": session_id})
        found_now = found["db_now"]
        step = db.session.execute(select(Step).filter_by(session_id=session_id)).scalar_one()

    # The database's clock, read twice a moment apart; on this machine it agrees with ours.
    assert abs(found.pop("db_now") - expected.pop("db_now")) < 5 and abs(found_now - time.time()) < 5
    assert found == expected
    assert found["requirements"] == SUBMISSION["requirements"] and found["created_at"].tzinfo is not None
    assert found["cancel_requested"] is False and found["lease_owner"] == "w"
    assert step.output == {"nested": [1, "two", None]} and step.started_at.tzinfo is not None


@pytest.mark.pipeline(FAST)
def test_a_pinned_connection_survives_a_failed_commit_and_writes_only_what_commits(app, store, client):
    """Runner threads keep one connection across transactions: a commit that fails must leave it clean."""
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]
    claim = store.claim("w")

    with store.pinned_connection():
        with pytest.raises(TypeError):  # not JSON: raised inside the transaction, after the row was read
            store.commit_step(claim, "first", {"not json": object()}, utcnow())
        assert store.commit_step(claim, "first", {"ok": True}, utcnow()) is StepResult.CONTINUE
        assert store.commit_step(claim, "second", {"ok": True}, utcnow(), status_fields={"note": "kept"}) \
            is StepResult.CONTINUE

    assert [step.output for step in rows(app, Step, session_id=session_id)] == [{"ok": True}, {"ok": True}]
    assert list(claim.outputs) == ["first", "second"]
    status = status_of(client, session_id)
    assert status["completed_tasks"] == ["first", "second"] and status["current_agent"] == "third"
    assert status["note"] == "kept" and status["status"] == "generating"
