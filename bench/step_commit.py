"""The step commit (Store.commit_step) at 100 to 1,000,000 sessions, next to raw sqlite3 on the same file.

One database grows through the sizes (fill_sessions tops it up between them). At each size the
benchmark runs rounds: make 2 x ROUND sessions with Store.create, claim them all with Store.claim,
then commit every step of the 5-step pipeline for each, alternating one timed Store.commit_step on
one session with one timed raw commit on another (same file, same connection pragmas), so both see
the same database, cache and disk at the same moment. Store calls run on a connection pinned to
the thread (Store.pinned_connection), as the runner's threads run them. The round's sessions are then deleted, so
the database holds the stated number of sessions throughout (filler + at most 2 x ROUND).

The raw commit is the least a step commit can be: BEGIN IMMEDIATE, INSERT the step row, UPDATE the
session (new agent, lease, updated_at, version + 1 and a status-document-sized text; status,
finished_at and lease cleared on the last step), fenced on lease_owner, COMMIT, through pysqlite3's
dbapi2 with the app's pragmas (WAL, synchronous=NORMAL, busy_timeout, foreign_keys).

What the figures leave out: fill_sessions makes session rows only, so the steps table holds just
the round's steps, not the ~5 per finished session a real database of that size would have.
"""
import json
import sys
import time
from datetime import datetime, timezone

from bench.common import ROOT, Result, fill_sessions, median, migrated_app, percentile, temporary_folder

BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # noop_agents, as the servers import it (PYTHONPATH=bench)

NAME = "step_commit"
WHAT = "Store.commit_step (record a step, advance its session) at 100 to 1,000,000 sessions vs raw sqlite3"

PIPELINE = [f"noop_agents:N{i}" for i in range(1, 6)]
SIZES = [100, 10_000, 100_000, 1_000_000]
QUICK_SIZES = [100, 1_000, 10_000]
ROUND = 10            # sessions per side per round: 5 steps each -> 50 timed commits per side
ROUNDS = 40           # 2,000 commits per side and size
QUICK_ROUNDS = 6      # 300
OWNER = "bench:step_commit"
OUTPUT = {"ok": True}  # a no-op step's output, the same on both sides

GROWTH_GOAL = 1.5
RAW_GOAL = 3.0


# -- raw sqlite3 --------------------------------------------------------------------------

def raw_connect(path, busy_timeout_ms=10_000):
    """A pysqlite3 connection set up as app/database.py sets up the app's (autocommit; we BEGIN)."""
    from app.database import sqlite_dbapi

    conn = sqlite_dbapi().connect(str(path), timeout=busy_timeout_ms / 1000, isolation_level=None,
                                  check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def db_time(value: datetime) -> str:
    """A timezone-aware datetime as SQLAlchemy stores it in SQLite (naive UTC text)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


RAW_INSERT = ("INSERT INTO steps (session_id, name, position, output, started_at, finished_at) "
              "VALUES (?, ?, ?, ?, ?, ?)")
RAW_ADVANCE = ("UPDATE sessions SET current_agent = ?, lease_expires_at = ?, progress_message = NULL, "
               "updated_at = ?, version = version + 1, status_document = ? WHERE id = ? AND lease_owner = ?")
RAW_FINISH = ("UPDATE sessions SET status = 'completed', current_agent = NULL, finished_at = ?, lease_owner = NULL, "
              "lease_expires_at = NULL, cancel_requested = 0, progress_message = NULL, updated_at = ?, "
              "version = version + 1, status_document = ? WHERE id = ? AND lease_owner = ?")

# session_counts is keyed by (owner, status): the session's owner ("" = no one), not the lease owner.
RAW_COUNT = "UPDATE session_counts SET sessions = sessions + ? WHERE owner = ? AND status = ?"
NO_OWNER = ""  # app.models.NO_OWNER: the owner of sessions made without one (Store.create's default)


def raw_commit(conn, session_id, owner, position, names, document, lease_seconds, started_at, counts=False,
               session_owner=NO_OWNER):
    """One raw step commit by lease owner `owner`; `counts`: the last step also moves session_counts
    (generating -> completed) in the rows of `session_owner`, the session's own owner."""
    now = datetime.now(timezone.utc)
    stamp = db_time(now)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(RAW_INSERT, (session_id, names[position], position, json.dumps(OUTPUT), started_at, stamp))
        if position + 1 < len(names):
            cursor = conn.execute(RAW_ADVANCE, (names[position + 1], time.time() + lease_seconds, stamp, document,
                                                session_id, owner))
        else:
            cursor = conn.execute(RAW_FINISH, (stamp, stamp, document, session_id, owner))
        if cursor.rowcount != 1:
            raise RuntimeError(f"raw fenced update of {session_id} matched {cursor.rowcount} rows")
        if counts and position + 1 == len(names):
            # In Store._count's order (sorted by owner, then status): completed before generating.
            conn.execute(RAW_COUNT, (1, session_owner, "completed"))
            conn.execute(RAW_COUNT, (-1, session_owner, "generating"))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def checkpoint(conn) -> None:
    """Fold the WAL into the database (a big fill leaves a huge one), so no timed commit pays for it."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def session_total(conn) -> int:
    return conn.execute("SELECT count(*) FROM sessions").fetchone()[0]


# -- one round ----------------------------------------------------------------------------

class Rig:
    """A store and a raw connection on one database, and the timed alternation between them."""

    def __init__(self, store, raw, owner=OWNER):
        self.store, self.raw, self.owner = store, raw, owner
        self.names = list(store.step_names)
        self.document = None

    def leased(self, count):
        """`count` sessions made by Store.create and claimed by this owner (not timed)."""
        ids = [self.store.create("bench", {"topic": "bench"}) for _ in range(count)]
        claimed = []
        for _ in ids:
            claim = self.store.claim(self.owner)
            if claim is None:
                raise RuntimeError("claim found nothing to run: another runnable session is in the way")
            claimed.append(claim)
        if {claim.session_id for claim in claimed} != set(ids):
            raise RuntimeError("claims took sessions this round did not make")
        if self.document is None:  # the raw side writes a text as long as a real status document
            self.document = self.read_document(claimed[0].session_id)
        return claimed

    # What touches the database through the raw driver: a subclass does it for another database.

    def read_document(self, session_id):
        return self.raw.execute("SELECT status_document FROM sessions WHERE id = ?", (session_id,)).fetchone()[0]

    def raw_commit(self, session_id, position, started):
        raw_commit(self.raw, session_id, self.owner, position, self.names, self.document, self.store.lease_seconds,
                   db_time(started))

    def settle(self):
        """After a fill, before timing: nothing a fill left behind is paid for by a timed commit."""
        checkpoint(self.raw)

    def session_total(self):
        return session_total(self.raw)

    def round(self, per_side, raw_side=True):
        """Timed commits of every step of `per_side` sessions, ours and raw alternating; then delete them."""
        with self.store.pinned_connection():  # as the runner's threads run (a no-op if already pinned)
            return self._round(per_side, raw_side)

    def _round(self, per_side, raw_side):
        from app.runner.store import StepResult

        claims = self.leased(per_side * (2 if raw_side else 1))
        raw_ids = [claim.session_id for claim in claims[per_side:]]
        ours_claims = claims[:per_side]
        ours, raw = [], []
        for position, name in enumerate(self.names):
            for i in range(per_side):
                started = datetime.now(timezone.utc)
                order = (0, 1) if (i + position) % 2 == 0 else (1, 0)
                for side in order:
                    if side == 0:
                        t = time.perf_counter()
                        result = self.store.commit_step(ours_claims[i], name, OUTPUT, started)
                        ours.append(time.perf_counter() - t)
                        expected = StepResult.COMPLETED if position + 1 == len(self.names) else StepResult.CONTINUE
                        if result is not expected:
                            raise RuntimeError(f"commit_step answered {result}, expected {expected}")
                    elif raw_side:
                        t = time.perf_counter()
                        self.raw_commit(raw_ids[i], position, started)
                        raw.append(time.perf_counter() - t)
        self.forget([claim.session_id for claim in ours_claims], raw_ids if raw_side else [])
        return ours, raw

    def forget(self, ours_ids, raw_ids):
        """Delete the round's sessions (steps cascade) and keep session_counts right (not timed).

        The raw side finished its sessions without moving session_counts: they were counted as
        generating when claimed, and leave as completed. All of them are no one's (Store.create's
        default owner), so it is the (NO_OWNER, status) rows that move.
        """
        ids = ours_ids + raw_ids
        marks = ",".join("?" * len(ids))
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            self.raw.execute(f"DELETE FROM sessions WHERE id IN ({marks})", ids)
            self.raw.execute(RAW_COUNT, (-len(ours_ids), NO_OWNER, "completed"))
            self.raw.execute(RAW_COUNT, (-len(raw_ids), NO_OWNER, "generating"))
            self.raw.execute("COMMIT")
        except BaseException:
            self.raw.execute("ROLLBACK")
            raise


def open_rig(folder, name="bench.db"):
    from app.runner import get_store

    app = migrated_app(folder / name, pipeline=PIPELINE)
    store = get_store(app)
    return Rig(store, raw_connect(folder / name, app.config["SQLITE_BUSY_TIMEOUT_MS"]))


def close_rig(rig):
    rig.raw.close()
    rig.store.engine.dispose()


def us(seconds):
    return seconds * 1e6


# -- the benchmark ------------------------------------------------------------------------

def run(quick: bool) -> list[Result]:
    sizes = QUICK_SIZES if quick else SIZES
    with temporary_folder("bench-step-commit-") as folder:
        rig = open_rig(folder)
        try:
            measured = measure(rig, sizes, QUICK_ROUNDS if quick else ROUNDS)
        finally:
            close_rig(rig)
    return report(NAME, measured, "raw sqlite3", "raw sqlite3 (INSERT step + UPDATE session)", RAW_GOAL,
                  GROWTH_GOAL, "the mean carries WAL checkpoints", "Step commit vs database size")


def measure(rig, sizes, rounds) -> list[tuple]:
    """At each size (filled up to it): `rounds` rounds of timed commits; the same for any database.

    Returns (size, ours median us, raw median us, ours p90, raw p90, commits, ours mean, raw mean) a size.
    """
    in_flight = 2 * ROUND
    measured = []
    filled = 0
    for size in sizes:
        started = time.monotonic()
        fill_sessions(rig.store, size - in_flight - filled)
        filled = size - in_flight
        rig.settle()
        fill_seconds = time.monotonic() - started
        rig.round(2, raw_side=True)  # warm-up: statement caches, pool, pages
        ours, raw = [], []
        for _ in range(rounds):
            o, r = rig.round(ROUND)
            ours += o
            raw += r
        total = rig.session_total()
        if total != filled:
            raise RuntimeError(f"expected {filled} sessions between rounds, found {total}")
        measured.append(summary(size, ours, raw, f"fill {fill_seconds:.1f} s"))
    return measured


def summary(size, ours, raw, remark) -> tuple:
    """A size's row for report(), from the seconds each commit took; printed as it is made."""
    print(f"   .. {size:>9,} sessions: commit_step {us(median(ours)):7.1f} us, raw {us(median(raw)):6.1f} us "
          f"({len(ours)} each; {remark})", flush=True)
    return (size, us(median(ours)), us(median(raw)), us(percentile(ours, 90)), us(percentile(raw, 90)), len(ours),
            us(sum(ours) / len(ours)), us(sum(raw) / len(raw)))


def report(name, measured, raw_name, raw_label, raw_goal, growth_goal, mean_note, title) -> list[Result]:
    """The rows: ours vs raw at each size, then ours' growth from the first size."""
    sizes = [m[0] for m in measured]
    first_ours, first_raw = measured[0][1], measured[0][2]
    series = {"x": sizes, "y": [m[1] for m in measured], "baseline": [m[2] for m in measured],
              "label": "Store.commit_step", "baseline_label": raw_label,
              "xlabel": "sessions in the database", "ylabel": "us per step commit (median)", "logx": True,
              "logy": True, "title": title}
    results = []
    for i, (size, ours, raw, ours90, raw90, n, ours_mean, raw_mean) in enumerate(measured):
        vs_raw = ours / raw
        results.append(Result(
            name, f"vs raw, {size:,} sessions", ours, raw, "us", vs_raw, f"<= {raw_goal:g}x raw",
            vs_raw <= raw_goal, baseline_name=raw_name,
            note=(f"median of {n} commits each; p90 {ours90:.0f} vs {raw90:.0f} us, mean {ours_mean:.0f} vs "
                  f"{raw_mean:.0f} us ({mean_note}); steps table: only the round's steps")
            if i == 0 or size == sizes[-1] else "",
            series=series if i == len(measured) - 1 else {}))
    for size, ours, raw, *_ in measured[1:]:
        growth = ours / first_ours
        results.append(Result(
            name, f"growth, {sizes[0]:,} -> {size:,}", ours, first_ours, "us", growth,
            f"<= {growth_goal:g}x", growth <= growth_goal, baseline_name=f"ours at {sizes[0]:,}",
            note=(f"{raw_name} grew {raw / first_raw:.2f}x over the same sizes" if size == sizes[-1] else "")))
    return results
