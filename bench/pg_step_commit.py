"""The step commit (Store.commit_step) on PostgreSQL at 100 to 100,000 sessions, next to raw psycopg.

bench/step_commit.py's rounds (its Rig), on databases of the run's throwaway cluster
(bench/postgres.py: fsync and synchronous_commit on, over TCP on 127.0.0.1): the store and the raw
side alternate one timed commit each, on sessions made by Store.create and claimed by Store.claim,
on a connection the thread keeps (Store.pinned_connection). Unlike on SQLite, each size has its
own database, all filled first, and the rounds go round the sizes in turn: a commit here waits
for a WAL flush whose cost moves with what the machine's disk is doing, and this way every size
(and so the growth figure) sees the same moments.

The raw commit is the same SQL as the SQLite one, through psycopg 3 on one connection with its
defaults (a transaction begun by the first statement, server-side prepared after 5 runs, as the
app's connections are): INSERT the step row, UPDATE the session fenced on lease_owner (new agent,
lease, updated_at, version + 1, a status-document-sized text; status, finished_at and lease
cleared on the last step), COMMIT. Ours also reads the session row FOR UPDATE (the fence and the
status document need it) and moves session_counts on the last step.

After each fill, VACUUM ANALYZE and a CHECKPOINT (the WAL checkpoint's counterpart on SQLite), so no
timed commit pays for the fill. Autovacuum runs as it would in production.
"""
import json
import sys
import time
from datetime import datetime, timezone

from bench.common import ROOT, Result, fill_sessions, migrated_app
from bench.postgres import cluster
from bench.step_commit import NO_OWNER, OUTPUT, PIPELINE, ROUND, Rig, report, summary

BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # noop_agents

NAME = "pg_step_commit"
WHAT = "Store.commit_step on PostgreSQL (fsync, synchronous_commit on) at 100 to 100,000 sessions vs raw psycopg"

SIZES = [100, 10_000, 100_000]
QUICK_SIZES = [100, 10_000]
ROUNDS = 20           # x ROUND sessions x 5 steps: 1,000 commits per side and size
QUICK_ROUNDS = 6
OWNER = "bench:pg_step_commit"

RAW_GOAL = 2.0      # one more round trip (the locked read) and the Python around it, beside the same WAL flush
GROWTH_GOAL = 1.5


# -- raw psycopg: bench/step_commit.py's statements, in PostgreSQL's spelling --------------

RAW_INSERT = ("INSERT INTO steps (session_id, name, position, output, started_at, finished_at) "
              "VALUES (%s, %s, %s, %s, %s, %s)")
RAW_ADVANCE = ("UPDATE sessions SET current_agent = %s, lease_expires_at = %s, progress_message = NULL, "
               "updated_at = %s, version = version + 1, status_document = %s WHERE id = %s AND lease_owner = %s")
RAW_FINISH = ("UPDATE sessions SET status = 'completed', current_agent = NULL, finished_at = %s, lease_owner = NULL, "
              "lease_expires_at = NULL, cancel_requested = false, progress_message = NULL, updated_at = %s, "
              "version = version + 1, status_document = %s WHERE id = %s AND lease_owner = %s")
RAW_COUNT = "UPDATE session_counts SET sessions = sessions + %s WHERE owner = %s AND status = %s"


def db_time(value: datetime) -> datetime:
    """A timezone-aware datetime as SQLAlchemy stores it here (naive UTC `timestamp`)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def raw_commit(conn, session_id, owner, position, names, document, lease_seconds, started_at, counts=False,
               session_owner=NO_OWNER):
    """One raw step commit by lease owner `owner` on a psycopg connection (not autocommit): as
    bench/step_commit.py's raw_commit, `counts` moving session_counts on the last step."""
    stamp = db_time(datetime.now(timezone.utc))
    cursor = conn.cursor()
    try:
        cursor.execute(RAW_INSERT, (session_id, names[position], position, json.dumps(OUTPUT), started_at, stamp))
        if position + 1 < len(names):
            cursor.execute(RAW_ADVANCE, (names[position + 1], time.time() + lease_seconds, stamp, document,
                                         session_id, owner))
        else:
            cursor.execute(RAW_FINISH, (stamp, stamp, document, session_id, owner))
        if cursor.rowcount != 1:
            raise RuntimeError(f"raw fenced update of {session_id} matched {cursor.rowcount} rows")
        if counts and position + 1 == len(names):
            cursor.execute(RAW_COUNT, (1, session_owner, "completed"))
            cursor.execute(RAW_COUNT, (-1, session_owner, "generating"))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return True


class PgRig(Rig):
    """bench/step_commit.py's Rig with its raw side on psycopg; `admin` is an autocommit connection."""

    def __init__(self, store, raw, admin, owner=OWNER):
        super().__init__(store, raw, owner)
        self.admin = admin

    def read_document(self, session_id):
        with self.raw.transaction():
            return self.raw.execute("SELECT status_document FROM sessions WHERE id = %s", (session_id,)).fetchone()[0]

    def raw_commit(self, session_id, position, started):
        raw_commit(self.raw, session_id, self.owner, position, self.names, self.document, self.store.lease_seconds,
                   db_time(started))

    def forget(self, ours_ids, raw_ids):
        """As Rig.forget: delete the round's sessions, keep session_counts right (not timed).

        First, that each of them is completed with its 5 steps recorded, ours and raw alike.
        """
        ids = ours_ids + raw_ids
        with self.raw.transaction():
            found = self.raw.execute(
                "SELECT s.status, count(t.id) FROM sessions s LEFT JOIN steps t ON t.session_id = s.id "
                "WHERE s.id = ANY(%s) GROUP BY s.id, s.status", (ids,)).fetchall()
            if sorted(found) != [("completed", len(self.names))] * len(ids):
                raise RuntimeError(f"a round's sessions are not all completed with {len(self.names)} steps: {found}")
            self.raw.execute("DELETE FROM sessions WHERE id = ANY(%s)", (ours_ids + raw_ids,))
            self.raw.execute(RAW_COUNT, (-len(ours_ids), NO_OWNER, "completed"))
            self.raw.execute(RAW_COUNT, (-len(raw_ids), NO_OWNER, "generating"))

    def settle(self):
        self.admin.execute("VACUUM ANALYZE")
        self.admin.execute("CHECKPOINT")

    def session_total(self):
        with self.raw.transaction():
            return self.raw.execute("SELECT count(*) FROM sessions").fetchone()[0]


def check_counts(conn, expected_completed):
    """session_counts agrees with the rows: every commit moved the counts it had to, nothing else."""
    with conn.transaction():
        rows = dict(conn.execute("SELECT status, count(*) FROM sessions GROUP BY status").fetchall())
        counted = {s: n for s, n in conn.execute("SELECT status, sum(sessions) FROM session_counts GROUP BY status")
                   .fetchall() if n}
        steps = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
    if rows != {"completed": expected_completed} or counted != rows or steps:
        raise RuntimeError(f"after the rounds: sessions {rows}, session_counts {counted}, {steps} steps left "
                           f"(expected {expected_completed} completed and no steps)")


def run(quick: bool) -> list[Result]:
    from app.runner import get_store

    sizes = QUICK_SIZES if quick else SIZES
    rounds = QUICK_ROUNDS if quick else ROUNDS
    pg = cluster()
    rigs, databases = {}, []
    try:
        for size in sizes:  # each its own database, filled up front
            database = pg.fresh_database(f"step_commit_{size}")
            databases.append(database)
            store = get_store(migrated_app(pg.url(database), pipeline=PIPELINE))
            rig = rigs[size] = PgRig(store, pg.connect(database), pg.connect(database, autocommit=True))
            started = time.monotonic()
            fill_sessions(store, size - 2 * ROUND)
            rig.settle()
            rig.round(2)  # warm-up: prepared statements, pool, pages
            print(f"   .. {size:,} sessions: filled in {time.monotonic() - started:.1f} s", flush=True)
        timed = {size: ([], []) for size in sizes}
        for r in range(rounds):  # a round on each database in turn, so every size sees the same moments
            for size in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
                ours, raw = rigs[size].round(ROUND)
                timed[size][0].extend(ours)
                timed[size][1].extend(raw)
        measured = []
        for size in sizes:
            check_counts(rigs[size].raw, size - 2 * ROUND)
            measured.append(summary(size, *timed[size], "rounds interleaved with the other sizes'"))
    finally:
        for rig in rigs.values():
            rig.raw.close()
            rig.admin.close()
            rig.store.engine.dispose()
        for database in databases:
            pg.drop_database(database)
    return report(NAME, measured, "raw psycopg", "raw psycopg (INSERT step + UPDATE session)", RAW_GOAL,
                  GROWTH_GOAL, "a WAL flush at every commit", "Step commit on PostgreSQL vs database size")
