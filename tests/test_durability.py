"""Durability with real servers: kill -9, clean restarts, SIGTERM hand-over, two servers, the recovery cap,
a process frozen past its lease.

Each test runs `gunicorn wsgi:app` (tests/servers.py) on a fresh database of its own, with the
test agents of tests/agents.py, which log every execution as `session step pid time` so a test
can tell which steps ran, where, how often and when. The database is read directly to see what
was recorded at a given moment. Waits have generous timeouts: they are upper bounds that stop a
broken run from hanging, never speed checks (except where a test says so, against a 600 s lease).
"""
import collections
import os
import signal
import time

import pytest
from servers import Server, migrate, request, server_env, status, status_response, submit, wait_until


PIPELINE = ["agents:First", "agents:Second", "agents:Third"]
NAMES = ["first", "second", "third"]
FINISHED = ("completed", "failed", "cancelled")


# -- helpers --------------------------------------------------------------------------------------

def deploy(database, tmp_path, pipeline, delay, extra=None):
    """`database` migrated by `flask db upgrade`, and the env of servers that use it."""
    env = server_env(database.url, pipeline, tmp_path / "agents.log", delay, extra)
    migrate(env)
    return env


@pytest.fixture
def db(empty_database):
    """The test's database, empty: deploy() migrates it with `flask db upgrade`, as an operator would."""
    return empty_database


def recorded(database):
    """The (session, step) pairs in the steps table."""
    return set(database.query("select session_id, name from steps"))


def steps_by_session(database):
    """session -> [(name, position)] in commit (id) order."""
    result = collections.defaultdict(list)
    for session_id, name, position in database.query("select session_id, name, position from steps order by id"):
        result[session_id].append((name, position))
    return result


def agent_runs(log_path):
    """Every step execution the agents logged: (session, step, pid, time), in log order."""
    if not log_path.exists():
        return []
    runs = []
    for line in log_path.read_text().splitlines():
        session_id, step, pid, at = line.split()
        runs.append((session_id, step, int(pid), float(at)))
    return runs


def finished_statuses(url, session_ids):
    """Every session's status once all have finished, else None."""
    docs = {sid: status(url, sid) for sid in session_ids}
    return docs if all(doc["status"] in FINISHED for doc in docs.values()) else None


def wait_finished(url, session_ids, timeout, message="every session finished"):
    return wait_until(lambda: finished_statuses(url, session_ids), timeout, message)


@pytest.fixture
def servers(tmp_path):
    """Start servers with launch(env, workers, name); every one is SIGKILLed (whole group) at teardown."""
    started = []

    def launch(env, workers, name):
        server = Server(env, tmp_path, workers=workers, name=name)
        started.append(server)
        return server.start()

    yield launch
    errors = []
    for server in started:
        try:
            server.kill(signal.SIGKILL)
        except Exception as exc:  # keep killing the others
            errors.append(exc)
    if errors:
        raise errors[0]


# -- a. kill -9 -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_of_whole_server_mid_run_resumes_every_session_and_reruns_only_interrupted_steps(
        db, tmp_path, servers):
    # given: gunicorn -w 2 running six sessions of a three-step pipeline whose steps take 0.4 s
    env = deploy(db, tmp_path, PIPELINE, delay=0.4)
    log = tmp_path / "agents.log"
    server = servers(env, 2, "before-crash-1")
    session_ids = [submit(server.url, f"Crash topic {i}") for i in range(6)]
    total = len(session_ids) * len(NAMES)

    # when: twice, while some but not all steps are recorded, the whole process group gets SIGKILL
    # and a new server starts on the same database
    crashes = []  # (time just after the kill, the (session, step) rows recorded at the kill)
    for crash in (1, 2):
        floor = len(crashes[-1][1]) if crashes else 0
        wait_until(lambda: floor < len(recorded(db)) < total, 60, f"crash {crash}: some, not all steps recorded")
        server.kill(signal.SIGKILL)
        killed_at = time.time()
        # Every process is gone, so the database now holds exactly what was committed at the kill.
        at_kill = recorded(db)
        crashes.append((killed_at, at_kill))
        server = servers(env, 2, f"after-crash-{crash}")
    docs = wait_finished(server.url, session_ids, 120)

    # then: every session completed, each step recorded once, in pipeline order
    for sid, doc in docs.items():
        assert doc["status"] == "completed", (sid, doc["error"])
        assert doc["completed_tasks"] == NAMES
    rows = steps_by_session(db)
    assert sorted(rows) == sorted(session_ids)
    for sid in session_ids:
        assert rows[sid] == [("first", 0), ("second", 1), ("third", 2)], sid
    assert len(db.query("select 1 from steps")) == total

    # ... each crash hit work in flight, and only that work ran again: no step recorded at a kill
    # was executed after it
    runs = agent_runs(log)
    for n, (killed_at, at_kill) in enumerate(crashes, 1):
        assert len(at_kill) < total, f"crash {n} came after everything was recorded"
        started_before = {(sid, step) for sid, step, _, at in runs if at < killed_at}
        assert started_before - at_kill, f"crash {n} interrupted no step"
        rerun = sorted((sid, step) for sid, step, _, at in runs if at > killed_at and (sid, step) in at_kill)
        assert rerun == [], f"steps recorded before crash {n} ran again after it: {rerun}"

    # ... and between two kills no step ran twice
    bounds = [0.0] + [killed_at for killed_at, _ in crashes] + [float("inf")]
    for lo, hi in zip(bounds, bounds[1:]):
        per_life = collections.Counter((sid, step) for sid, step, _, at in runs if lo < at < hi)
        assert [key for key, count in per_life.items() if count > 1] == []


# -- b. clean restart -----------------------------------------------------------------------------

@pytest.mark.slow
def test_clean_restart_leaves_finished_sessions_byte_identical(db, tmp_path, servers):
    # given: three sessions completed on a server, their status answers and stored rows
    env = deploy(db, tmp_path, PIPELINE, delay=0.05)
    server = servers(env, 2, "first-life")
    session_ids = [submit(server.url, f"Restart topic {i}") for i in range(3)]
    docs = wait_finished(server.url, session_ids, 60)
    assert all(doc["status"] == "completed" for doc in docs.values()), docs
    http_before = {sid: status_response(server.url, sid) for sid in session_ids}

    # when: the server is stopped with SIGTERM and a new one runs on the database for a few seconds
    assert server.kill(signal.SIGTERM) == 0, server.log_tail()
    sessions_before = db.query("select * from sessions order by id")
    steps_before = db.query("select * from steps order by id")
    server = servers(env, 2, "second-life")
    wait_until(lambda: server.log_text().count(" threads, lease ") >= 2, 30, "both workers' runners started")
    time.sleep(3)  # the runner loop polls every second: three rounds of claims, recovery and heartbeats

    # then: not a byte of a finished session changed, in the database or over HTTP
    assert db.query("select * from sessions order by id") == sessions_before
    assert db.query("select * from steps order by id") == steps_before
    for sid in session_ids:
        after = status_response(server.url, sid)
        assert after.status == 200
        assert after.body == http_before[sid].body
        assert after.headers["ETag"] == http_before[sid].headers["ETag"]


# -- c. SIGTERM hand-over -------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_hands_leases_back_so_a_new_server_resumes_without_waiting_for_expiry(db, tmp_path, servers):
    # given: server A (one worker, 600 s leases) running three sessions of 1 s steps, mid-step
    env = deploy(db, tmp_path, PIPELINE, delay=1.0, extra={"REPORTS_LEASE_SECONDS": 600})
    log = tmp_path / "agents.log"
    a = servers(env, 1, "a")
    session_ids = [submit(a.url, f"Handover topic {i}") for i in range(3)]
    total = len(session_ids) * len(NAMES)
    wait_until(lambda: 0 < len(recorded(db)) < total, 60, "A has recorded some, not all steps")

    # when: A's process group gets SIGTERM, as in a deploy
    assert a.kill(signal.SIGTERM) == 0, a.log_tail()
    a_stopped_at = time.time()

    # then: A handed back the lease of every session it did not finish
    unfinished = db.query("select id from sessions where status in ('queued', 'generating')")
    assert unfinished, "A finished everything: nothing was handed over"
    held = db.query("select id, status, lease_owner from sessions "
                    "where status in ('queued', 'generating') and lease_owner is not null")
    assert held == []

    # ... and B, on the same database, completes every session far sooner than the 600 s lease
    b = servers(env, 1, "b")
    docs = wait_finished(b.url, session_ids, 60, "B completed every session within 60 s (lease: 600 s)")
    for sid, doc in docs.items():
        assert doc["status"] == "completed", (sid, doc["error"])
        assert doc["completed_tasks"] == NAMES
    rows = steps_by_session(db)
    for sid in session_ids:
        assert rows[sid] == [("first", 0), ("second", 1), ("third", 2)], sid
    runs = agent_runs(log)
    counts = collections.Counter((sid, step) for sid, step, _, _ in runs)
    assert [key for key, count in counts.items() if count > 1] == [], "a step ran on both A and B"
    assert len(counts) == total
    a_pids = {pid for _, _, pid, at in runs if at < a_stopped_at}
    b_steps = [(sid, step) for sid, step, pid, at in runs if at > a_stopped_at and pid not in a_pids]
    assert b_steps, "B ran no step"


# -- d. two servers -------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_servers_on_one_database_run_every_step_exactly_once_in_order(db, tmp_path, servers):
    # given: two servers, two workers each, on one database
    env = deploy(db, tmp_path, PIPELINE, delay=0.05)
    log = tmp_path / "agents.log"
    a = servers(env, 2, "a")
    b = servers(env, 2, "b")

    # when: sixteen sessions are submitted to them alternately
    session_ids = [submit((a, b)[i % 2].url, f"Two servers topic {i}") for i in range(16)]
    docs = wait_finished(a.url, session_ids, 120)

    # then: all completed, every step executed exactly once (nothing crashed), in pipeline order
    for sid, doc in docs.items():
        assert doc["status"] == "completed", (sid, doc["error"])
        assert doc["completed_tasks"] == NAMES
    runs = agent_runs(log)
    counts = collections.Counter((sid, step) for sid, step, _, _ in runs)
    assert counts == collections.Counter({(sid, name): 1 for sid in session_ids for name in NAMES})
    order = collections.defaultdict(list)
    for sid, step, _, at in sorted(runs, key=lambda run: run[3]):
        order[sid].append(step)
    assert {sid: steps for sid, steps in order.items() if steps != NAMES} == {}
    rows = steps_by_session(db)
    for sid in session_ids:
        assert rows[sid] == [("first", 0), ("second", 1), ("third", 2)], sid


# -- e. the recovery cap --------------------------------------------------------------------------

@pytest.mark.slow
def test_step_that_kills_its_worker_every_time_fails_the_session_after_max_attempts(db, tmp_path, servers):
    # given: one worker and a pipeline whose second step SIGKILLs its own process, at most 2 resumes
    env = deploy(db, tmp_path, ["agents:First", "agents:KillSelf"], delay=0, extra={"REPORTS_MAX_ATTEMPTS": 2})
    log = tmp_path / "agents.log"
    server = servers(env, 1, "killself")

    # when: a session is submitted; gunicorn respawns the worker after each kill and its runner
    # finds the dead owner's session and resumes it
    sid = submit(server.url)
    doc = wait_finished(server.url, [sid], 120)[sid]

    # then: the session failed at killself, saying it gave up at the attempt limit
    assert doc["status"] == "failed", doc
    assert doc["failed_step"] == "killself"
    assert "Gave up after 2 interrupted runs" in doc["error"] and "REPORTS_MAX_ATTEMPTS=2" in doc["error"], doc
    assert doc["completed_tasks"] == ["first"]
    assert db.query("select name, position from steps where session_id = ?", (sid,)) == [("first", 0)]
    assert db.query("select lease_owner from sessions where id = ?", (sid,)) == [(None,)]

    # ... killself ran MAX_ATTEMPTS + 1 = 3 times, each in a new worker; first ran once
    runs = agent_runs(log)
    kills = [pid for _, step, pid, _ in runs if step == "killself"]
    assert len(kills) == 3 and len(set(kills)) == 3, runs
    assert [step for _, step, _, _ in runs].count("first") == 1
    assert server.running, server.log_tail()
    assert server.log_text().count("was sent SIGKILL") == 3, server.log_tail()


# -- f. a process frozen past its lease -------------------------------------------------------------

@pytest.mark.slow
def test_a_process_frozen_past_its_lease_records_nothing_when_it_wakes(db, tmp_path, servers):
    # given: servers of one worker running one session at a time, a 2 s lease, and 2 s steps
    env = deploy(db, tmp_path, PIPELINE, delay=2.0,
                 extra={"REPORTS_LEASE_SECONDS": "2", "REPORTS_RUNNER_THREADS": "1"})
    log = tmp_path / "agents.log"
    a = servers(env, 1, "a")
    sid = submit(a.url, "Frozen past its lease")
    first = wait_until(lambda: next((run for run in agent_runs(log) if run[0] == sid), None), 30,
                       "the first step started")
    frozen = first[2]

    # when: the worker is frozen mid-step (SIGSTOP, as a paused VM) until another server has taken the
    # session over and started the step again, then woken
    os.kill(frozen, signal.SIGSTOP)
    try:
        b = servers(env, 1, "b")
        wait_until(lambda: any(run[0] == sid and run[2] != frozen for run in agent_runs(log)), 60,
                   "another server took the session over")
    finally:
        os.kill(frozen, signal.SIGCONT)
    doc = wait_finished(b.url, [sid], 60)[sid]

    # then: the woken worker finished its step but recorded nothing, and said so; the session went on
    # with the other server's run of that step, and every step is recorded once, in order
    wait_until(lambda: "no longer holds the lease" in a.log_text(), 30, "the woken worker reports the lost lease")
    lost = [line for line in a.log_text().splitlines() if "no longer holds the lease" in line]
    assert len(lost) == 1 and f"session {sid}: step first finished" in lost[0] and f"[{frozen}]" in lost[0]
    assert doc["status"] == "completed" and doc["completed_tasks"] == NAMES
    assert steps_by_session(db)[sid] == [("first", 0), ("second", 1), ("third", 2)]
    runs = collections.Counter(step for session_id, step, _, _ in agent_runs(log) if session_id == sid)
    assert runs == {"first": 2, "second": 1, "third": 1}
    assert "reports_lease_losses_total 1.0" in request("GET", a.url + "/metrics").body.decode()
