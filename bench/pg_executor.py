"""Steps per second on PostgreSQL with 1, 2 and 4 worker processes, next to raw psycopg workers of the same shape.

Ours: N `flask --app wsgi worker` processes (the background runner alone, no HTTP; REPORTS_RUNNER_THREADS=4
threads each, REPORTS_POLL_SECONDS=0.05 as bench/executor.py sets it) on one database of the run's
throwaway cluster (bench/postgres.py: fsync and synchronous_commit on), the pipeline 5 no-op agents
(bench/noop_agents.py, on PYTHONPATH).

Raw: N processes x 4 threads, each thread on its own psycopg connection looping over the least a
runner must do per session: the FIFO claim (SELECT the oldest runnable FOR UPDATE SKIP LOCKED, UPDATE
it to generating with the lease and a status-document-sized text, move session_counts, read its
steps, COMMIT) and the 5 step commits of bench/pg_step_commit.py (the last moving session_counts);
with nothing to claim it sleeps 0.05 s. No agents, no Flask, no SQLAlchemy.

Both fleets run side by side, each on its own database, and each is frozen (SIGSTOP) while the other
runs a batch, so an idle fleet's polling (16 raw threads at 20 Hz) loads neither. A batch is SESSIONS
queued sessions inserted in one transaction (bench/common.py fill_sessions); its clock runs from
just before that insert until session_counts, polled every 10 ms, shows every one completed
(as bench/executor.py). Batches alternate between the fleets (the side going first alternating
too); the median batch counts. Each database must then hold every session completed with exactly 5
steps, session_counts agreeing. Last, both fleets get SIGTERM: a process that exits nonzero, or is
still running 30 s later (killed), is named in the output and in the row's note.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from bench.common import ROOT, Result, fill_sessions, migrated_app, temporary_folder
from bench.executor import check_finished, counts
from bench.pg_step_commit import RAW_COUNT, db_time, raw_commit
from bench.postgres import cluster
from bench.step_commit import PIPELINE

BENCH = ROOT / "bench"
BIN = ROOT / ".venv" / "bin"

NAME = "pg_executor"
WHAT = ("steps/s through claim -> no-op step -> commit on PostgreSQL: 1, 2, 4 worker processes x 4 threads "
        "vs raw psycopg workers of the same shape")

WORKERS = (1, 2, 4)
QUICK_WORKERS = (1, 4)
THREADS = 4
SESSIONS = 300          # a batch, x 5 steps
BATCHES = 3             # per fleet and worker count; the median counts
QUICK_SESSIONS = 150
QUICK_BATCHES = 1
POLL_SECONDS = 0.05     # an idle runner's look for work (both fleets)
POLL_INTERVAL = 0.01    # the clock's look at session_counts
TIMEOUT = 300
STOP_TIMEOUT = 30
# After SIGCONT, before SIGTERM: long enough for a worker's main thread to be back in its wait. A
# SIGTERM landing while it loops round may hit app/worker.py's handler deadlock (see bench/findings.md).
RESUMED = 1.2
GOAL = 0.5

# Ours: the background runner alone, no HTTP (app/worker.py).
WORKER = [str(BIN / "flask"), "--app", "wsgi", "worker"]
OURS_READY = re.compile(r"runner \S+: \d+ threads")  # Runner.start's log line
RAW_READY = "raw worker ready"


# -- processes ----------------------------------------------------------------------------

def base_env(url: str) -> dict[str, str]:
    """The environment of a worker: the database, the no-op pipeline, nothing inherited that changes them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPORTS_", "FLASK_", "DBOS_"))
           and k not in ("DATABASE_URL", "PYTHONPATH", "WEB_CONCURRENCY")}
    env.update(DATABASE_URL=url, REPORTS_PIPELINE=json.dumps(PIPELINE), REPORTS_RUNNER_THREADS=str(THREADS),
               REPORTS_POLL_SECONDS=str(POLL_SECONDS), PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]))
    return env


class Fleet:
    """`count` copies of a command, each in its own process group, logging to a file; stopped by SIGTERM."""

    def __init__(self, command, env, count, folder: Path, name: str, ready):
        self.command, self.env, self.count, self.name, self.ready = command, env, count, name, ready
        self.logs = [folder / f"{name}-{i}.log" for i in range(count)]
        self.procs: list[subprocess.Popen] = []

    def start(self, timeout=120) -> "Fleet":
        for log_path in self.logs:
            with open(log_path, "ab") as log:
                self.procs.append(subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True))
        try:
            deadline = time.monotonic() + timeout
            waiting = set(range(self.count))
            while waiting:
                for i in list(waiting):
                    if self._is_ready(self.logs[i].read_text(errors="replace")):
                        waiting.discard(i)
                if not self.running:
                    raise RuntimeError(f"{self.name}: a process exited at start:\n{self.log_tail()}")
                if waiting and time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: not ready after {timeout}s:\n{self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.kill()
            raise
        return self

    def _is_ready(self, text: str) -> bool:
        return bool(self.ready.search(text)) if hasattr(self.ready, "search") else self.ready in text

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def cpu_seconds(self) -> float:
        return cpu_seconds(p.pid for p in self.procs)

    def pause(self) -> None:
        """Freeze every process (SIGSTOP), so an idle fleet's polling costs the measured one nothing."""
        signal_all(self.procs, signal.SIGSTOP)

    def resume(self) -> None:
        signal_all(self.procs, signal.SIGCONT)

    def stop(self, timeout=STOP_TIMEOUT) -> list[str]:
        """SIGTERM to every process; what went wrong (a nonzero exit, or still running `timeout` s later: killed)."""
        self.resume()
        time.sleep(RESUMED)
        signal_all(self.procs, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        problems = []
        for p in self.procs:
            try:
                status = p.wait(timeout=max(0.1, deadline - time.monotonic()))
                if status:
                    problems.append(f"pid {p.pid} exited {status} on SIGTERM")
            except subprocess.TimeoutExpired:
                problems.append(f"pid {p.pid} still running {timeout} s after SIGTERM (killed)")
        self.kill()
        return problems

    def kill(self) -> None:
        """SIGKILL to whatever is left of every process group, and wait for each."""
        signal_all(self.procs, signal.SIGCONT)
        signal_all(self.procs, signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def log_tail(self, lines=15) -> str:
        return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                         for path in self.logs if path.exists())


def signal_all(procs, sig) -> None:
    """`sig` to the process group each of `procs` leads (start_new_session)."""
    for p in procs:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass


def cpu_seconds(pids) -> float:
    """User + system CPU time of live processes, all their threads (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


# -- the raw fleet ------------------------------------------------------------------------

RAW_PICK = ("SELECT id, status, owner FROM sessions WHERE status IN ('queued', 'generating') "
            "AND (lease_owner IS NULL OR lease_expires_at < %s) ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED")
RAW_TAKE = ("UPDATE sessions SET status = 'generating', current_agent = %s, lease_owner = %s, lease_expires_at = %s, "
            "updated_at = %s, version = version + 1, status_document = %s WHERE id = %s")
RAW_STEPS = "SELECT name, output FROM steps WHERE session_id = %s ORDER BY position, id"


def raw_claim(conn, owner, first_step, document, lease_seconds):
    """bench/executor.py's raw FIFO claim, on PostgreSQL: the oldest runnable row, locked, skipping locked ones."""
    now = time.time()
    cursor = conn.cursor()
    try:
        row = cursor.execute(RAW_PICK, (now,)).fetchone()
        if row is None:
            conn.commit()
            return None
        session_id, status, session_owner = row
        stamp = db_time(datetime.now(timezone.utc))
        cursor.execute(RAW_TAKE, (first_step, owner, now + lease_seconds, stamp, document, session_id))
        if cursor.rowcount != 1:
            raise RuntimeError(f"raw claim of {session_id} matched no row")
        if status != "generating":  # the session's own (owner, status) rows, in Store._count's order
            cursor.execute(RAW_COUNT, (1, session_owner, "generating"))
            cursor.execute(RAW_COUNT, (-1, session_owner, status))
        cursor.execute(RAW_STEPS, (session_id,)).fetchall()
        conn.commit()
        return session_id, session_owner
    except BaseException:
        conn.rollback()
        raise


def raw_worker() -> None:
    """A raw fleet's process (python -c 'from bench.pg_executor import raw_worker; raw_worker()' ARGS)."""
    import psycopg

    args = json.loads(sys.argv[1])
    names, document, lease = args["names"], args["document"], args["lease_seconds"]
    owner = f"bench:raw:{os.getpid()}"
    stopping = threading.Event()
    # The handler only appends: it runs in the main thread between two bytecodes, possibly inside
    # stopping.wait() with the Event's lock held, where stopping.set() would wait for itself forever.
    signals = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: signals.append(signum))
    errors = []

    def loop(conn):
        try:
            while not stopping.is_set():
                claimed = raw_claim(conn, owner, names[0], document, lease)
                if claimed is None:
                    stopping.wait(args["poll_seconds"])
                    continue
                session_id, session_owner = claimed
                for position in range(len(names)):
                    started = db_time(datetime.now(timezone.utc))
                    raw_commit(conn, session_id, owner, position, names, document, lease, started, counts=True,
                               session_owner=session_owner)
        except Exception as exc:
            errors.append(repr(exc))
            print(f"raw worker thread failed: {exc!r}", flush=True)
        finally:
            conn.close()

    connections = [psycopg.connect(args["conninfo"]) for _ in range(args["threads"])]
    threads = [threading.Thread(target=loop, args=(conn,)) for conn in connections]
    for t in threads:
        t.start()
    print(f"{RAW_READY}: {owner}, {len(threads)} threads", flush=True)
    while not signals:
        time.sleep(0.2)
    stopping.set()
    for t in threads:
        t.join()
    sys.exit(1 if errors else 0)


# -- batches ------------------------------------------------------------------------------

class Side:
    """A fleet on its own database, the store that fills its batches, and a connection that watches it."""

    def __init__(self, label, fleet, store, watch, database, pg):
        self.label, self.fleet, self.store, self.watch = label, fleet, store, watch
        self.database, self.pg = database, pg
        self.sessions = 0  # queued so far, every one to be completed
        self.rates, self.details = [], []
        self.problems = []  # how its processes failed to stop (close_side)

    def batch(self, sessions, timed=True):
        """Queue `sessions` and wait until all are completed; the fleet runs (SIGCONT) for that long only."""
        self.fleet.resume()
        try:
            self._batch(sessions, timed)
        finally:
            self.fleet.pause()

    def _batch(self, sessions, timed):
        before = db_time(datetime.now(timezone.utc))  # steps started after this are the batch's
        done_before = completed(self.watch)
        activity, cpu = self.pg.activity(), self.fleet.cpu_seconds()
        started = time.perf_counter()
        fill_sessions(self.store, sessions, status="queued")
        deadline = time.monotonic() + TIMEOUT
        while completed(self.watch) - done_before < sessions:
            if time.monotonic() > deadline or not self.fleet.running:
                raise RuntimeError(f"{self.label}: {counts(self.watch)} after {TIMEOUT}s (running: "
                                   f"{self.fleet.running})\n{self.fleet.log_tail()}")
            time.sleep(POLL_INTERVAL)
        elapsed = time.perf_counter() - started
        xids, wal = (after - before for after, before in zip(self.pg.activity(), activity))
        cpu = self.fleet.cpu_seconds() - cpu
        self.sessions += sessions
        check_finished(self.watch, self.sessions, len(PIPELINE))
        if timed:
            first, last = self.watch.execute("SELECT (SELECT min(started_at) FROM steps WHERE started_at > %s), "
                                             "(SELECT max(finished_at) FROM sessions)", (before,)).fetchone()
            inside = (last - first).total_seconds()
            steps = sessions * len(PIPELINE)
            self.rates.append(steps / elapsed)
            self.details.append({"elapsed": elapsed, "inside": inside, "steps": steps, "xids": xids / steps,
                                 "wal": wal / steps, "cpu": cpu / steps})

    def median_batch(self):
        order = sorted(range(len(self.rates)), key=self.rates.__getitem__)
        i = order[len(order) // 2]
        return self.rates[i], self.details[i]


def work(details) -> str:
    """Per step in a batch: the database's write transactions (each waits for a WAL flush) and WAL bytes, and the
    CPU time the worker processes spent (the clients' own cost, which the noise of a shared machine barely moves)."""
    return (f"{details['xids']:.2f} write transactions, {details['wal']:,.0f} B of WAL and "
            f"{details['cpu'] * 1e6:,.0f} us of CPU in the workers a step")


def completed(conn) -> int:
    found = counts(conn)
    return sum(int(found.get(s) or 0) for s in ("completed", "failed", "cancelled"))


def check_end(side) -> None:
    """Every session completed with exactly its steps, and session_counts agreeing with the rows."""
    check_finished(side.watch, side.sessions, len(PIPELINE))
    rows = dict(side.watch.execute("SELECT status, count(*) FROM sessions GROUP BY status").fetchall())
    counted = {s: int(n) for s, n in counts(side.watch).items() if n}
    if counted != rows:
        raise RuntimeError(f"{side.label}: session_counts {counted} but rows {rows}")


def open_side(pg, folder, label, workers, ours=True) -> Side:
    """A fresh migrated database and its fleet (ours, or raw), started and paused; close_side() undoes it."""
    from app.runner import get_store

    database = pg.fresh_database(f"executor_{label.split()[0]}")
    url = pg.url(database)
    store = get_store(migrated_app(url, pipeline=PIPELINE))
    env = base_env(url)
    if not ours:
        args = {"conninfo": pg.url(database, driver=None), "threads": THREADS, "names": list(store.step_names),
                "document": store.render(document_row(), []), "lease_seconds": store.lease_seconds,
                "poll_seconds": POLL_SECONDS}
        fleet = Fleet([sys.executable, "-c", "from bench.pg_executor import raw_worker; raw_worker()",
                       json.dumps(args)], env, workers, folder, database, RAW_READY)
    else:
        fleet = Fleet(WORKER, env, workers, folder, database, OURS_READY)
    side = Side(label, fleet, store, pg.connect(database, autocommit=True), database, pg)
    try:
        fleet.start()
    except BaseException:
        close_side(pg, side)
        raise
    fleet.pause()  # until its first batch
    return side


def document_row() -> dict:
    """A queued session's values, to render a status document of the real size for the raw side."""
    now = datetime.now(timezone.utc)
    return dict(id="00000000-0000-4000-8000-000000000000", status="generating", user_request="bench",
                requirements={"topic": "bench"}, current_agent="n1", progress_message=None, status_fields={},
                error=None, failed_step=None, created_at=now, updated_at=now, finished_at=None, attempts=0,
                cancel_requested=False)


def close_side(pg, side) -> None:
    """Stop its fleet (SIGTERM; what went wrong goes to side.problems, and is printed), drop its database."""
    try:
        side.problems = side.fleet.stop()
        if side.problems:
            print(f"   !! {side.label}: {'; '.join(side.problems)}\n{side.fleet.log_tail(5)}", flush=True)
    except BaseException:
        side.fleet.kill()
        raise
    finally:
        side.watch.close()
        side.store.engine.dispose()
        pg.drop_database(side.database)


def compare(pg, folder, workers, sessions, batches):
    """Ours and raw with `workers` processes, batches alternating; returns (ours side, raw side)."""
    with ExitStack() as opened:  # each side closed on the way out, whatever happens to the other
        ours = open_side(pg, folder, f"ours w{workers}", workers)
        opened.callback(close_side, pg, ours)
        raw = open_side(pg, folder, f"raw w{workers}", workers, ours=False)
        opened.callback(close_side, pg, raw)
        for side in (ours, raw):  # warm-up: every thread connects, claims and commits once
            side.batch(2 * workers * THREADS, timed=False)
        for b in range(batches):
            for side in ((ours, raw) if b % 2 == 0 else (raw, ours)):
                side.batch(sessions)
        for side in (ours, raw):
            check_end(side)
    return ours, raw


# -- the benchmark ------------------------------------------------------------------------

def run(quick: bool) -> list[Result]:
    sessions = QUICK_SESSIONS if quick else SESSIONS
    batches = QUICK_BATCHES if quick else BATCHES
    pg = cluster()
    measured = []
    with temporary_folder("bench-pg-executor-") as folder:
        for workers in (QUICK_WORKERS if quick else WORKERS):
            ours, raw = compare(pg, folder, workers, sessions, batches)
            (rate, details), (raw_rate, raw_details) = ours.median_batch(), raw.median_batch()
            print(f"   .. {workers} worker(s): ours {rate:,.0f} steps/s ({details['steps']} steps in "
                  f"{details['elapsed']:.2f} s, {work(details)}), raw {raw_rate:,.0f} steps/s "
                  f"({raw_details['elapsed']:.2f} s, {work(raw_details)}); batches ours "
                  f"{[round(r) for r in ours.rates]}, raw {[round(r) for r in raw.rates]}", flush=True)
            problems = [f"{side.label}: {p}" for side in (ours, raw) for p in side.problems]
            measured.append((workers, rate, raw_rate, details, ours.rates, raw.rates, raw_details, problems))
    results = []
    for workers, rate, raw_rate, details, ours_rates, raw_rates, raw_details, problems in measured:
        ratio = rate / raw_rate
        results.append(Result(
            NAME, f"{workers} worker(s) x {THREADS} threads", rate, raw_rate, "steps/s", ratio,
            f">= {GOAL:g} of raw", ratio >= GOAL, baseline_name=f"raw psycopg, {workers} x {THREADS}",
            note=(f"flask worker processes; batches of {sessions} sessions x {len(PIPELINE)} no-op steps, "
                  f"median of {batches} "
                  f"(ours {[round(r) for r in ours_rates]}, raw {[round(r) for r in raw_rates]}), timed from the "
                  f"enqueue commit to all completed ({details['elapsed']:.2f} s; first step to last finish "
                  f"{details['inside']:.2f} s); raw = the same processes x threads doing the FIFO claim and 5 step "
                  f"commits per session, no agents. Per step: ours {work(details)}, raw {work(raw_details)}"
                  + (f". STOPPING FAILED: {'; '.join(problems)}" if problems else "")),
            series={"x": list(m[0] for m in measured), "y": [m[1] for m in measured],
                    "baseline": [m[2] for m in measured], "label": "ours (flask worker processes)",
                    "baseline_label": "raw psycopg workers", "xlabel": f"worker processes x {THREADS} threads",
                    "ylabel": "steps/s (median batch)", "title": "Executor on PostgreSQL"}
            if workers == measured[-1][0] else {}))
    first = measured[0]
    for workers, rate, raw_rate, *_ in measured[1:]:
        results.append(Result(
            NAME, f"scaling, {first[0]} -> {workers} workers", rate, first[1], "steps/s", rate / first[1], "-", None,
            baseline_name=f"ours, {first[0]} worker",
            note=f"raw psycopg scaled {raw_rate / first[2]:.2f}x over the same step; {os.cpu_count()} cores"))
    return results
