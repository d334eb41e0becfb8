"""Steps per second through the whole runner path, in real gunicorn servers, vs a raw sqlite3 loop.

Ours: `gunicorn -w 1` and `-w 2` (tests/servers.py, gunicorn.conf.py's hooks start a runner with
its default 4 threads in each worker) with REPORTS_PIPELINE = 5 no-op agents (bench/noop_agents.py,
on PYTHONPATH). Once the server answers, a batch of SESSIONS queued sessions goes into the database
in one transaction (fill_sessions, status "queued"), and the clock runs from that commit until the
session_counts table, polled every 10 ms, shows every one completed; BATCHES batches in a row on
the same server, the median counts. (The raw loop's claim sorts the queued sessions to find the
oldest, so its cost grows with the queue; ours walks indexes: queue_turns in turn order, then the
owner's queue. A batch of a few hundred keeps that term small for the baseline.) The batch is no
one's (owner ""), so ours takes turns among one owner: the claim does its fair-turn bookkeeping
(bench/claim.py measures that against FIFO) and runs the sessions oldest first, as the raw loop does.
REPORTS_POLL_SECONDS=0.05 bounds how long an idle runner takes to notice the batch (with the
default 1 s that wait alone would be a large part of the run); once busy, a runner claims again as
soon as a session ends.

Raw: one thread of pysqlite3 with the app's pragmas doing, per session, the claim (BEGIN
IMMEDIATE, pick the oldest runnable, conditional UPDATE taking the lease and re-writing the status
document, move the session owner's (owner, status) rows of session_counts, read the finished
steps, COMMIT: the FIFO claim, with no turns to keep) and the 5 step commits of
bench/step_commit.py (INSERT step + fenced UPDATE session, the last also moving session_counts),
on a database with the same number of queued sessions. It runs no agents at all: it is the floor.
"""
import os
import time
from datetime import datetime, timezone

from bench.common import ROOT, Result, fill_sessions, median, migrated_app, temporary_folder
from bench.step_commit import PIPELINE, RAW_COUNT, db_time, raw_commit, raw_connect

BENCH = ROOT / "bench"

NAME = "executor"
WHAT = "steps/s through claim -> no-op step -> commit in gunicorn -w 1 / -w 2 vs a raw sqlite3 loop"

SESSIONS = 300          # a batch, x 5 steps (the claim's cost grows with the queue: keep it moderate)
BATCHES = 5             # on one server; the median batch counts (each is ~0.3 s: more of them steady it)
QUICK_SESSIONS = 100
QUICK_BATCHES = 1
RAW_RUNS = 3
GOAL = 0.2
POLL_INTERVAL = 0.01
TIMEOUT = 300


def queued_database(path, sessions):
    """A migrated database holding `sessions` queued sessions; returns its Store."""
    from app.runner import get_store

    store = get_store(migrated_app(path, pipeline=PIPELINE))
    if sessions:
        fill_sessions(store, sessions, status="queued")
    return store


def counts(conn) -> dict[str, int]:
    """Sessions by status, everyone's together (session_counts has a row per owner and status)."""
    return dict(conn.execute("SELECT status, sum(sessions) FROM session_counts GROUP BY status").fetchall())


def check_finished(conn, sessions, steps_per_session):
    """Every session completed, with exactly its steps: nothing failed, lost or doubled."""
    by_status = dict(conn.execute("SELECT status, count(*) FROM sessions GROUP BY status").fetchall())
    steps = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
    if by_status != {"completed": sessions} or steps != sessions * steps_per_session:
        raise RuntimeError(f"expected {sessions} completed sessions with {steps_per_session} steps each, "
                           f"found {by_status} and {steps} steps")


# -- ours: a real server ------------------------------------------------------------------

def server_steps_per_second(folder, workers, sessions, batches=1, name="executor"):
    """Steps/s of `gunicorn -w workers` running `batches` batches of `sessions` queued no-op sessions.

    Returns (median steps/s over the batches, details of the median batch).
    """
    from servers import Server, server_env

    db = folder / f"{name}-w{workers}.db"
    store = queued_database(db, 0)
    env = server_env(f"sqlite:///{db}", PIPELINE, folder / f"{name}-agents.log", extra={"REPORTS_POLL_SECONDS": 0.05})
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env["PYTHONPATH"]])
    server = Server(env, folder, workers=workers, name=f"{name}-w{workers}")
    raw = raw_connect(db)
    runs = []
    try:
        server.start()
        for batch in range(batches):
            before = db_time(datetime.now(timezone.utc))  # steps started after this are the batch's
            done_before = counts(raw).get("completed", 0)
            started = time.perf_counter()
            fill_sessions(store, sessions, status="queued")
            deadline = time.monotonic() + TIMEOUT
            while True:
                found = counts(raw)
                if sum(found.get(s, 0) for s in ("completed", "failed", "cancelled")) - done_before >= sessions:
                    break
                if time.monotonic() > deadline or not server.running:
                    raise RuntimeError(f"gunicorn -w {workers}: {found} after {TIMEOUT}s (running: "
                                       f"{server.running})\n{server.log_tail()}")
                time.sleep(POLL_INTERVAL)
            elapsed = time.perf_counter() - started
            check_finished(raw, sessions * (batch + 1), len(PIPELINE))
            # The same batch by the database's own clock: first step started -> last session finished.
            first, last = raw.execute("SELECT (SELECT min(started_at) FROM steps WHERE started_at > ?), "
                                      "(SELECT max(finished_at) FROM sessions)", (before,)).fetchone()
            inside = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
            steps = sessions * len(PIPELINE)
            runs.append((steps / elapsed, {"elapsed": elapsed, "inside": inside, "steps": steps,
                                           "inside_rate": steps / inside if inside > 0 else float("nan")}))
    finally:
        try:
            server.kill()
        finally:
            raw.close()
            store.engine.dispose()
    runs.sort(key=lambda r: r[0])
    return runs[len(runs) // 2]


# -- the floor: a raw loop ----------------------------------------------------------------

RAW_PICK = ("SELECT id, status, owner FROM sessions WHERE status IN ('queued', 'generating') "
            "AND (lease_owner IS NULL OR lease_expires_at < ?) ORDER BY created_at LIMIT 1")
RAW_TAKE = ("UPDATE sessions SET status = 'generating', current_agent = ?, lease_owner = ?, lease_expires_at = ?, "
            "updated_at = ?, version = version + 1, status_document = ? "
            "WHERE id = ? AND (lease_owner IS NULL OR lease_expires_at < ?)")
RAW_STEPS = "SELECT name, output FROM steps WHERE session_id = ? ORDER BY position, id"


def raw_claim(conn, owner, first_step, document, lease_seconds):
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(RAW_PICK, (now,)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            return None
        session_id, status, session_owner = row
        stamp = db_time(datetime.now(timezone.utc))
        if conn.execute(RAW_TAKE, (first_step, owner, now + lease_seconds, stamp, document, session_id,
                                   now)).rowcount != 1:
            raise RuntimeError(f"raw claim of {session_id} matched no row")
        if status != "generating":  # the session's own (owner, status) rows, in Store._count's order
            conn.execute(RAW_COUNT, (1, session_owner, "generating"))
            conn.execute(RAW_COUNT, (-1, session_owner, status))
        conn.execute(RAW_STEPS, (session_id,)).fetchall()
        conn.execute("COMMIT")
        return session_id, session_owner
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def raw_steps_per_second(folder, sessions, run=0):
    db = folder / f"raw-{run}.db"
    store = queued_database(db, sessions)
    names = list(store.step_names)
    lease = store.lease_seconds
    store.engine.dispose()
    conn = raw_connect(db)
    try:
        document = conn.execute("SELECT status_document FROM sessions LIMIT 1").fetchone()[0]
        owner = "bench:raw-loop"
        started = time.perf_counter()
        while True:
            claimed = raw_claim(conn, owner, names[0], document, lease)
            if claimed is None:
                break
            session_id, session_owner = claimed
            for position in range(len(names)):
                step_started = db_time(datetime.now(timezone.utc))
                raw_commit(conn, session_id, owner, position, names, document, lease, step_started, counts=True,
                           session_owner=session_owner)
        elapsed = time.perf_counter() - started
        check_finished(conn, sessions, len(names))
        found = counts(conn)
        if found.get("completed") != sessions or found.get("queued") or found.get("generating"):
            raise RuntimeError(f"raw loop left session_counts at {found}")
        return sessions * len(names) / elapsed
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(f"{db}{suffix}")
            except FileNotFoundError:
                pass


def raw_rate(folder, sessions, runs=RAW_RUNS) -> float:
    return median([raw_steps_per_second(folder, sessions, run) for run in range(runs)])


# -- the benchmark ------------------------------------------------------------------------

def run(quick: bool) -> list[Result]:
    sessions = QUICK_SESSIONS if quick else SESSIONS
    batches = QUICK_BATCHES if quick else BATCHES
    results = []
    with temporary_folder("bench-executor-") as folder:
        raw = raw_rate(folder, sessions)
        print(f"   .. raw loop: {raw:,.0f} steps/s ({sessions} sessions x {len(PIPELINE)} steps, median of "
              f"{RAW_RUNS})", flush=True)
        for workers in (1, 2):
            rate, details = server_steps_per_second(folder, workers, sessions, batches)
            print(f"   .. gunicorn -w {workers}: {rate:,.0f} steps/s ({details['steps']} steps in "
                  f"{details['elapsed']:.2f} s, median batch of {batches}; {details['inside_rate']:,.0f} steps/s "
                  f"from first step to last finish)", flush=True)
            ratio = rate / raw
            results.append(Result(
                NAME, f"gunicorn -w {workers}, no-op steps", rate, raw, "steps/s", ratio, f">= {GOAL:g} of raw",
                ratio >= GOAL, baseline_name="raw sqlite3 loop",
                note=(f"batches of {sessions} sessions x {len(PIPELINE)} no-op steps (median of {batches}), 4 runner "
                      f"threads a worker, timed from the enqueue commit to all completed ({details['elapsed']:.2f} s; "
                      f"first step to last finish {details['inside']:.2f} s = {details['inside_rate']:,.0f} steps/s); "
                      "raw = one thread, claim + 5 step commits a session, no agents")))
    return results
