"""The store under concurrent writers, on whichever database the run uses (SQLite or PostgreSQL).

SQLite serialises writers with its one write lock; PostgreSQL locks rows, so the same code must
lock shared rows in one order, serialise what a quota compares, and time leases by one clock.
"""
import logging
import threading
import time

import pytest
from sqlalchemy import text

from app.extensions import db
from app.runner.store import QuotaExceeded, Store

from conftest import SUBMISSION

THREADS = 4


def run_together(count, work):
    """Run work(i) in `count` threads released at the same moment; returns the exceptions they raised."""
    start, errors = threading.Barrier(count), []

    def run(i):
        start.wait()
        try:
            work(i)
        except Exception as exc:  # collected, so the test can show every one
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def new_store(app, **limits):
    with app.app_context():
        return Store(db.engine, ["first", "second"], lease_seconds=15, max_attempts=3, **limits)


def counted(app, owner):
    """{status: sessions} as session_counts holds them, and as counting the rows gives them."""
    with app.app_context(), db.engine.connect() as conn:
        kept = dict(conn.execute(text("SELECT status, sessions FROM session_counts WHERE owner = :o AND sessions != 0"),
                                 {"o": owner}).all())
        rows = dict(conn.execute(text("SELECT status, count(*) FROM sessions WHERE owner = :o GROUP BY status"),
                                 {"o": owner}).all())
    return kept, rows


class Retries(logging.Handler):
    """The store's "lost a race ... running it again" lines (the app's loggers do not propagate to pytest's)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        if "lost a race" in record.getMessage():
            self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("app.runner.store").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("app.runner.store").removeHandler(self)


def meet_after_first(statement, parties, timeout=2.0):
    """Make `statement` (a store's CompiledStatement) wait, after its first run in each thread, until
    `parties` threads got that far or `timeout` passed: it holds two transactions at their worst moment.
    A thread that cannot get that far (it waits for a lock the other holds) lets the other go on alone."""
    barrier, seen, run = threading.Barrier(parties, timeout=timeout), threading.local(), statement.execute

    def execute(conn, params):
        cursor = run(conn, params)
        if not getattr(seen, "done", False):
            seen.done = True
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return cursor

    statement.execute = execute


def test_a_cancel_and_a_retry_at_once_never_deadlock(app):
    """A cancel moves one session queued -> cancelled while a retry moves another cancelled -> queued: the
    same two count rows, which both must lock in one order, or each holds the row the other waits for."""
    store = new_store(app)
    queued, cancelled = (store.create(SUBMISSION["user_request"], SUBMISSION["requirements"], owner="alice")
                         for _ in range(2))
    store.cancel(cancelled)
    meet_after_first(store._count_move, 2)  # each holds its first count row before it takes the second

    with Retries() as retries:
        errors = run_together(2, lambda i: store.cancel(queued) if i == 0 else store.retry(cancelled))

    assert errors == []
    assert retries.messages == []  # no transaction was a deadlock victim: none had to run again
    kept, rows = counted(app, "alice")
    assert kept == rows == {"queued": 1, "cancelled": 1}


def test_many_cancels_and_retries_at_once_leave_exact_counts(app):
    store = new_store(app)
    sessions = [store.create(SUBMISSION["user_request"], SUBMISSION["requirements"], owner="alice")
                for _ in range(THREADS)]

    def flip(i):
        for _ in range(25):
            if store.cancel(sessions[i]) != "cancelled" or store.retry(sessions[i]) != "queued":
                raise AssertionError("a cancel or a retry did not take")

    with Retries() as retries:
        errors = run_together(THREADS, flip)

    assert errors == [] and retries.messages == []
    kept, rows = counted(app, "alice")
    assert kept == rows == {"queued": THREADS}


def test_concurrent_submits_never_pass_a_users_quota(app):
    """Eight submits at once for a user allowed three: exactly three are queued, the rest refused.

    Each submit that passed its check waits there for the others: were the checks not taken in turn,
    all eight would read "none queued yet" and all eight would be stored.
    """
    store = new_store(app, max_active_per_user=3)
    meet_after_first(store._owner_active, 8)
    made = []
    errors = run_together(8, lambda i: made.append(store.create(SUBMISSION["user_request"],
                                                                SUBMISSION["requirements"], owner="bob")))

    assert len(made) == 3
    assert len(errors) == 5 and all(isinstance(e, QuotaExceeded) for e in errors), errors
    kept, rows = counted(app, "bob")
    assert kept == rows == {"queued": 3}


def test_concurrent_submits_never_pass_the_queue_cap(app):
    """Eight users submit at once to a queue with five places: five are queued, three refused."""
    store = new_store(app, max_queued=5)
    meet_after_first(store._queued_total, 8)
    made = []
    errors = run_together(8, lambda i: made.append(store.create(SUBMISSION["user_request"],
                                                                SUBMISSION["requirements"], owner=f"user{i}")))

    assert len(made) == 5 and len(errors) == 3 and all(isinstance(e, QuotaExceeded) for e in errors), errors
    assert sum(counted(app, f"user{i}")[1].get("queued", 0) for i in range(8)) == 5


def test_concurrent_claims_take_each_session_once(app):
    store = new_store(app)
    for i in range(12):
        store.create(SUBMISSION["user_request"], SUBMISSION["requirements"], owner=f"user{i % 3}")
    taken = []

    def claim_all(i):
        while (claim := store.claim(f"runner{i}")) is not None:
            taken.append(claim.session_id)

    assert run_together(THREADS, claim_all) == []
    assert len(taken) == len(set(taken)) == 12


def test_leases_are_timed_by_the_database_clock_not_the_hosts(app, monkeypatch):
    """A process whose clock runs an hour ahead must not take a lease another process still holds."""
    store = new_store(app)
    session_id = store.create(SUBMISSION["user_request"], SUBMISSION["requirements"])
    holder = store.claim("holder")
    assert holder.session_id == session_id

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    assert store.claim("fast-clock") is None
    assert store.heartbeat("holder") == 1  # and the holder still holds it

    # Once the lease is over by the database's clock, anyone may resume it.
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("UPDATE sessions SET lease_expires_at = lease_expires_at - 3600 WHERE id = :id"),
                     {"id": session_id})
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)  # now an hour behind: still no matter
    resumed = store.claim("slow-clock")
    assert resumed is not None and resumed.resumed and resumed.session_id == session_id


@pytest.mark.parametrize("operation", ["create", "cancel"])
def test_a_transaction_the_database_aborts_in_a_race_runs_again(app, monkeypatch, operation):
    """A deadlock victim (SQLSTATE 40P01) or serialization failure (40001) is rolled back whole: run it again."""
    store = new_store(app)
    session_id = store.create(SUBMISSION["user_request"], SUBMISSION["requirements"])

    class Deadlock(Exception):
        sqlstate = "40P01"

    calls = []
    original = Store._count

    def fail_once(self, conn, deltas):
        calls.append(deltas)
        if len(calls) == 1:
            raise Deadlock("deadlock detected")
        return original(self, conn, deltas)

    monkeypatch.setattr(Store, "_count", fail_once)
    if operation == "create":
        store.create(SUBMISSION["user_request"], SUBMISSION["requirements"])
    else:
        assert store.cancel(session_id) == "cancelled"

    assert len(calls) == 2  # the first attempt rolled back, the second committed
    kept, rows = counted(app, "")
    assert kept == rows
