"""Store.claim with fair turns (round robin among owners) at 100 and 10,000 queued sessions, next to FIFO.

For each case (CASES) one migrated SQLite database holds its queued sessions spread evenly across
its owners, inserted in bulk (fill_sessions, one call per owner: its sessions and session_counts row,
and its queue_turns row as Store.create makes it, never had a turn, joined in that order). No
session is anyone's to resume. The benchmark then runs rounds on that database: ROUND timed claims
a side, alternating one Store.claim (fair turns) with one FIFO claim, the side going first
alternating too, so both see the same database, cache and disk at the same moment. Both run on a
connection pinned to the thread (Store.pinned_connection), as the runner's threads run them. After
each round (not timed) every claimed session is checked to be generating under our lease, then in
one write transaction deleted and replaced by a new queued session of the same owner, created now
(the newest), with session_counts moved per owner as the store moves them; so the queue stays
within 2 x ROUND of its size and at most 2 x ROUND sessions are generating, about what a few
runner threads hold (every claim walks the generating sessions whose lease is live looking for one
to resume: thousands of them would be a cost of their own, not the turns'). Also between rounds,
the WAL is checkpointed once it passes CHECKPOINT_PAGES, below SQLite's auto-checkpoint (1,000
pages), so no timed claim pays for a checkpoint's fsync (~20 ms here): the p99 is the claims' own.
What each side adds to the WAL (and so to checkpoints) is counted instead: pages per claim.

FIFO, the baseline, is the claim as it was before fair turns, verbatim but for the look before the
lock (skipped once a claim finds work, as on both sides here): in one write transaction (BEGIN
IMMEDIATE), the store's own compiled `_TAKE_QUEUED` and `_TAKE_RESUMABLE` statements, the older of
their rows, its recorded steps, and the same `_change` to generating (lease, re-rendered status
document, version + 1, session_counts). The fair claim adds finding whose turn it is
(`_NEXT_TURN`: queue_turns in turn order, probing each owner's queue), taking that owner's oldest
(`_TAKE_TURN`) and moving the owner's turn (`_TURN_TAKEN`), and drops the FIFO take.

Not timed, but checked, so a broken fair claim cannot make a flattering number: before timing,
2 x owners + 1 claims a side are each compared with the session predicted independently (the owners in
the order they joined, each turn going to the back of the line; that owner's oldest queued
session; for FIFO, the oldest queued session of all); after timing, the owner of every timed fair
claim is compared with the same rotation, so any `owners` consecutive fair claims serve every
owner once, and session_counts must equal the sessions counted per owner and status.

The third case is the second with IDLE more owners in queue_turns who have nothing queued: users
who submitted before, whose last turn (a day ago) is older than any active owner's. Their rows stay
(a long-running deployment keeps one per user who ever submitted) but are not waiting, so the
claim's walk of ix_queue_turns_order (waiting first) never reaches them; before the `waiting`
flag, each claim probed every one of them (~1.3 ms a claim with 1,000, ~10 ms with 10,000).
"""
import os
import time
import uuid
from collections import Counter, deque
from datetime import datetime, timedelta, timezone

from bench.common import Result, fill_sessions, migrated_app, percentile, temporary_folder
from bench.step_commit import PIPELINE, RAW_COUNT, checkpoint, db_time, raw_connect

NAME = "claim"
WHAT = ("Store.claim with fair turns among owners at 100 and 10,000 queued sessions (and with 1,000 idle owners) "
        "vs the FIFO claim it replaced")

# (queued sessions, owners with sessions queued, owners in queue_turns with nothing queued)
SMALL, LARGE, IDLE = (100, 10, 0), (10_000, 100, 0), (10_000, 100, 1_000)
CASES = [SMALL, LARGE, IDLE]
CLAIMS = 2_000        # timed claims per side and size
QUICK_CLAIMS = 500
ROUND = 4             # claims per side between top-ups (at most 8 generating; each owner keeps sessions queued)
RUNNER = "bench:claim"  # the lease owner (a runner process), not a session owner
CHECKPOINT_PAGES = 700  # between rounds, checkpoint the WAL past this (a round writes ~150 pages; SQLite: 1,000)
GOAL = 1.5            # fair median <= 1.5x FIFO median: turns may cost a few index probes, not a scan
GROWTH_GOAL = 1.25    # fair's growth from 100 to 10,000 queued <= 1.25x FIFO's: the turns' cost must not grow


# -- the claims ---------------------------------------------------------------------------

def fifo_claim(store, runner):
    """The claim before fair turns: the oldest runnable session (queued, or one to resume), on the same store.

    Store.claim as it was, minus the read-only look before the lock, which both sides skip while
    claims find work, and minus the give-up and cancel branches, which no session here takes.
    """
    from app.runner.store import Claim

    with store._write() as conn:
        found = [take.first(conn, {}) for take in (store._take_queued, store._take_resumable)]
        found = [row for row in found if row is not None]
        if not found:
            return None
        row = min(found, key=lambda r: (r["created_at"], r["id"]))
        steps = [(r["name"], r["output"]) for r in store._steps.all(conn, {"session_id": row["id"]})]
        completed = [name for name, _ in steps]
        resumed = row["lease_owner"] is not None
        attempts = row["attempts"] + int(resumed)
        pending = [name for name in store.step_names if name not in completed]
        if attempts > store.max_attempts or row["cancel_requested"] or not pending:
            raise RuntimeError(f"FIFO claim found session {row['id']} to fail, cancel or complete: not a fresh one")
        store._change(conn, row, completed, status="generating", current_agent=pending[0], attempts=attempts,
                      lease_owner=runner, lease_expires_at=row["db_now"] + store.lease_seconds)
        return Claim(row["id"], runner, row["user_request"], row["requirements"],
                     {name: output for name, output in steps}, resumed)


# -- the database -------------------------------------------------------------------------

def owner_names(owners):
    return [f"user{i:03d}" for i in range(owners)]


def queued_database(path, queued, owners, idle=0):
    """A migrated database of `queued` queued sessions, queued // owners of each owner; (store, raw, names).

    `idle`: that many more owners who queued sessions before and have none queued now (users who
    submitted once, a day ago): only their queue_turns rows, as Store.create made them and their
    last claim moved them, their last turn a day ago, before any turn the owners above will have had.
    """
    from app.runner import get_store

    store = get_store(migrated_app(path, pipeline=PIPELINE))
    names = owner_names(owners)
    for name in names:  # each owner joins the turns in this order (queue_turns.joined_at)
        fill_sessions(store, queued // owners, status="queued", steps=(), owner=name)
    raw = raw_connect(path)
    turns = raw.execute("SELECT owner, last_turn_at FROM queue_turns ORDER BY joined_at, owner").fetchall()
    if [o for o, _ in turns if o in names] != names or any(t for o, t in turns if o in names):
        raise RuntimeError(f"queue_turns is not what Store.create would have made: {turns[:5]}...")
    day_ago = time.time() - 86_400
    raw.execute("BEGIN IMMEDIATE")
    raw.executemany("INSERT INTO queue_turns (owner, waiting, last_turn_at, joined_at) VALUES (?, 0, ?, ?)",
                    [(f"idle{i:05d}", day_ago + i * 0.001, day_ago - 3600 + i * 0.001) for i in range(idle)])
    raw.execute("COMMIT")
    checkpoint(raw)
    return store, raw, names


def queued_count(raw):
    return raw.execute("SELECT count(*) FROM sessions WHERE status = 'queued'").fetchone()[0]


def check_counts(raw):
    """session_counts against the sessions themselves, per owner and status."""
    kept = {(o, s): n for o, s, n in raw.execute("SELECT owner, status, sessions FROM session_counts") if n}
    found = {(o, s): n for o, s, n in raw.execute("SELECT owner, status, count(*) FROM sessions GROUP BY 1, 2")}
    if kept != found:
        differ = sorted(set(kept.items()) ^ set(found.items()))
        raise RuntimeError(f"session_counts disagrees with the sessions: {differ}")


# -- the rounds ---------------------------------------------------------------------------

class Rig:
    """A store and a raw connection on one queued database; `turns` is the rotation the fair claims must follow."""

    def __init__(self, store, raw, names, path):
        from app.models import ReportSession

        self.store, self.raw, self.names = store, raw, names
        self.turns = deque(names)  # nobody has had a turn: by arrival, then each turn goes to the back
        self.fair_claims = 0
        self.wal = f"{path}-wal"
        self.frame = raw.execute("PRAGMA page_size").fetchone()[0] + 24  # a WAL frame: page + header
        self.wal_pages = {0: 0, 1: 0}  # WAL frames each side's claims appended
        # A new queued session from a claimed one: its request and owner, nothing of the claim (its status
        # document is copied as it was: the claim renders a new one and nothing here reads it).
        fresh = dict(id="?", status="'queued'", current_agent="NULL", progress_message="NULL", error="NULL",
                     failed_step="NULL", created_at="?", updated_at="?", finished_at="NULL", lease_owner="NULL",
                     lease_expires_at="NULL", attempts="0", cancel_requested="0", version="1")
        columns = [c.name for c in ReportSession.__table__.columns]
        self.requeue = (f"INSERT INTO sessions ({', '.join(columns)}) SELECT "
                        f"{', '.join(fresh.get(c, c) for c in columns)} FROM sessions WHERE id = ?")

    def wal_size(self):
        try:
            return os.stat(self.wal).st_size
        except FileNotFoundError:
            return 0

    def expected_owner(self):
        owner = self.turns.popleft()
        self.turns.append(owner)
        return owner

    def oldest_queued(self, owner=None):
        where, args = ("AND owner = ?", (owner,)) if owner is not None else ("", ())
        return self.raw.execute(f"SELECT id FROM sessions WHERE status = 'queued' {where} "
                                "ORDER BY created_at, id LIMIT 1", args).fetchone()[0]

    def rounds(self, count, check=False):
        """`count` claims a side in rounds of ROUND: (fair seconds, FIFO seconds).

        With `check`, each claim is first compared with the session predicted for it (the
        prediction's queries then sit between the claims, so these are not for timing).
        """
        with self.store.pinned_connection():
            fair, fifo = [], []
            for r in range(-(-count // ROUND)):
                taken, fair_ids = [], []
                for i in range(ROUND):
                    for side in ((0, 1) if (r + i) % 2 == 0 else (1, 0)):
                        expected = turn = None
                        if check:  # whose turn: the rotation, advanced past this round's fair claims so far
                            turn = self.turns[len(fair_ids)] if side == 0 else None
                            expected = self.oldest_queued(turn)
                        wal = self.wal_size()
                        if wal > 900 * self.frame:  # never let SQLite's auto-checkpoint (1,000) land in a claim
                            checkpoint(self.raw)
                            wal = self.wal_size()
                        started = time.perf_counter()
                        claim = self.store.claim(RUNNER) if side == 0 else fifo_claim(self.store, RUNNER)
                        elapsed = time.perf_counter() - started
                        self.wal_pages[side] += (self.wal_size() - wal) // self.frame
                        if claim is None:
                            raise RuntimeError(f"{'fair' if side == 0 else 'FIFO'} claim found nothing in a full queue")
                        if check and claim.session_id != expected:
                            raise RuntimeError(f"{'fair' if side == 0 else 'FIFO'} claim took {claim.session_id}, "
                                               f"expected {expected} (the oldest queued of {turn or 'all'})")
                        (fair if side == 0 else fifo).append(elapsed)
                        taken.append(claim.session_id)
                        if side == 0:
                            fair_ids.append(claim.session_id)
                owners = self.replace(taken)
                for session_id in fair_ids:
                    expected_owner = self.expected_owner()
                    if owners[session_id] != expected_owner:
                        raise RuntimeError(f"fair claim {self.fair_claims + 1} served {owners[session_id]!r}, whose "
                                           f"turn it was not: {expected_owner!r}'s was (round robin by arrival)")
                    self.fair_claims += 1
            return fair[:count], fifo[:count]

    def replace(self, taken):
        """Check the claimed sessions (generating, under our lease); delete them and queue a new one for each owner.

        One write transaction; session_counts moves per owner, sorted by owner and status as
        Store._count moves it. Then, if the WAL has grown past CHECKPOINT_PAGES, a checkpoint.
        Returns {claimed session id: its owner}.
        """
        marks = ",".join("?" * len(taken))
        rows = {sid: (owner, status, lease) for sid, owner, status, lease in self.raw.execute(
            f"SELECT id, owner, status, lease_owner FROM sessions WHERE id IN ({marks})", taken)}
        for session_id in taken:
            owner, status, lease = rows.get(session_id, (None, None, None))
            if status != "generating" or lease != RUNNER:
                raise RuntimeError(f"claimed session {session_id} is {status} under {lease!r}, not generating under "
                                   f"{RUNNER!r}")
        if len(set(taken)) != len(taken):
            raise RuntimeError("two claims took the same session")
        moved = Counter(rows[sid][0] for sid in taken)
        now = datetime.now(timezone.utc)
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            for k, session_id in enumerate(taken):
                stamp = db_time(now + timedelta(microseconds=k))  # newest, in claim order
                self.raw.execute(self.requeue, (str(uuid.uuid4()), stamp, stamp, session_id))
            self.raw.execute(f"DELETE FROM sessions WHERE id IN ({marks})", taken)
            for owner in sorted(moved):
                self.raw.execute(RAW_COUNT, (-moved[owner], owner, "generating"))
                self.raw.execute(RAW_COUNT, (moved[owner], owner, "queued"))
            self.raw.execute("COMMIT")
        except BaseException:
            self.raw.execute("ROLLBACK")
            raise
        if self.wal_size() > CHECKPOINT_PAGES * self.frame:
            checkpoint(self.raw)
        return {sid: row[0] for sid, row in rows.items()}


def measure(folder, queued, owners, idle, claims):
    """At one size: (fair seconds, FIFO seconds, fair claims checked in turn, WAL pages per fair / FIFO claim)."""
    path = folder / f"claim-{queued}-{owners}-{idle}.db"
    store, raw, names = queued_database(path, queued, owners, idle)
    try:
        rig = Rig(store, raw, names, path)
        rig.rounds(2 * owners + 1, check=True)  # also the warm-up: statement caches, pool, pages
        checkpoint(raw)
        rig.wal_pages = {0: 0, 1: 0}
        fair, fifo = rig.rounds(claims)
        if queued_count(raw) != queued:
            raise RuntimeError(f"expected {queued} queued sessions after the rounds, found {queued_count(raw)}")
        check_counts(raw)
        return fair, fifo, rig.fair_claims, rig.wal_pages[0] / len(fair), rig.wal_pages[1] / len(fifo)
    finally:
        raw.close()
        store.engine.dispose()


def us(seconds):
    return seconds * 1e6


# -- the benchmark ------------------------------------------------------------------------

def label(queued, owners, idle):
    return f"{queued:,} queued / {owners} owners" + (f" + {idle:,} idle" if idle else "")


def run(quick: bool) -> list[Result]:
    claims = QUICK_CLAIMS if quick else CLAIMS
    measured = {}
    with temporary_folder("bench-claim-") as folder:
        for case in CASES:
            started = time.monotonic()
            fair, fifo, checked, fair_wal, fifo_wal = measure(folder, *case, claims)
            m = measured[case] = dict(
                checked=checked, fair_wal=fair_wal, fifo_wal=fifo_wal,
                **{f"{side}{p}": us(percentile(times, p)) for side, times in (("fair", fair), ("fifo", fifo))
                   for p in (50, 90, 99)})
            print(f"   .. {label(*case)}: fair {m['fair50']:.1f} us (p99 {m['fair99']:.1f}), FIFO {m['fifo50']:.1f} us "
                  f"(p99 {m['fifo99']:.1f}); {claims} claims each, {checked} fair claims in turn "
                  f"({time.monotonic() - started:.1f} s)", flush=True)

    sized = [SMALL, LARGE]
    series = {"x": [c[0] for c in sized], "y": [measured[c]["fair50"] for c in sized],
              "baseline": [measured[c]["fifo50"] for c in sized], "label": "Store.claim (fair turns)",
              "baseline_label": "FIFO claim (oldest queued)",
              "xlabel": "queued sessions (10 owners at 100, 100 owners at 10,000)", "ylabel": "us per claim (median)",
              "logx": True, "title": "Claim: fair turns vs FIFO, by queue size"}
    results = []
    for case in CASES:
        m, (queued, owners, idle) = measured[case], case
        ratio = m["fair50"] / m["fifo50"]
        idle_note = (f"; {idle:,} more owners in queue_turns have nothing queued, their last turn a day ago (users "
                     "who submitted before): the fair claim probes each of them, in turn order, before the first "
                     "owner with a queued session" if idle else "")
        results.append(Result(
            NAME, f"fair vs FIFO, {label(*case)}", m["fair50"], m["fifo50"], "us", ratio, f"<= {GOAL:g}x FIFO",
            ratio <= GOAL, baseline_name="FIFO claim",
            note=(f"median of {claims} claims each, alternating on one database, each really claiming (generating "
                  f"under our lease), the queue topped up to {queued:,} every {ROUND} claims a side; all "
                  f"{m['checked']} fair claims served the owners in turn (each {owners} in a row: every owner "
                  f"once); p90 {m['fair90']:.0f} vs {m['fifo90']:.0f} us; WAL pages per claim "
                  f"{m['fair_wal']:.1f} vs {m['fifo_wal']:.1f}{idle_note}"),
            series=series if case == LARGE else {}))
        results.append(Result(
            NAME, f"p99, {label(*case)}", m["fair99"], m["fifo99"], "us", m["fair99"] / m["fifo99"], "-", None,
            baseline_name="FIFO claim p99",
            note=("the same claims' p99; WAL checkpoints run between rounds, so no timed claim waits for one"
                  if case == LARGE else "")))
    small, large = measured[SMALL], measured[LARGE]
    fair_growth, fifo_growth = large["fair50"] / small["fair50"], large["fifo50"] / small["fifo50"]
    relative = fair_growth / fifo_growth
    results.append(Result(
        NAME, f"growth, {SMALL[0]:,} -> {LARGE[0]:,} queued", fair_growth, fifo_growth, "x", relative,
        f"<= {GROWTH_GOAL:g}x FIFO's", relative <= GROWTH_GOAL, baseline_name="FIFO's growth",
        note=(f"median per claim from {label(*SMALL)} to {label(*LARGE)}: fair {small['fair50']:.0f} -> "
              f"{large['fair50']:.0f} us ({fair_growth:.2f}x), FIFO {small['fifo50']:.0f} -> {large['fifo50']:.0f} us "
              f"({fifo_growth:.2f}x). What both share is the database's size (100 times the sessions, each with "
              "its status document); the turns' own share must not grow with the queue")))
    return results
