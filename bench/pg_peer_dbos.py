"""The same no-op 5-step workflow through DBOS Transact on PostgreSQL, next to ours on the same cluster.

DBOS's natural home is PostgreSQL: here its system database is a fresh database of the run's
throwaway cluster (bench/postgres.py: fsync and synchronous_commit on), given as DBOSConfig's
`system_database_url` as DBOS documents it; DBOS creates it and its schema on launch. DBOS runs in
bench/peer_dbos.py's virtualenv (.venv-bench-dbos, which has psycopg 3: DBOS's own engine uses
postgresql+psycopg, pool of 20 as shipped). Its settings are read back from DBOS's own engine and
printed: the same server, so the same fsync, synchronous_commit and WAL set-up as ours.

DBOS side: PROCESSES processes, each `@DBOS.workflow()` calling five `@DBOS.step()` functions that
return {}, called directly by 4 threads (as bench/peer_dbos.py), each process its own executor id.
The processes stay up for the whole comparison; each round they share SESSIONS workflows, and the
clock runs from telling them to start until every one has reported its share done.

Ours: the same number of `flask --app wsgi worker` processes x 4 runner threads on their own database
of the same cluster, SESSIONS queued sessions a batch, timed from the enqueue commit to all completed
(bench/pg_executor.py's Side, whose workers are frozen between their batches; DBOS's idle processes
are left running: they poll about once a second). Rounds alternate between the two (the side going
first alternating too); the median round of each counts. At the end DBOS's tables must show every workflow SUCCESS
with exactly 5 step outputs, and ours every session completed with exactly 5 steps.

DBOS's direct call has no queue: a thread starts the workflow itself. Ours also claims each
session from the queue, a transaction (and a WAL flush) DBOS does not make.
"""
import json
import os
import subprocess
import threading
import time
from contextlib import ExitStack

from bench.common import Result, median, temporary_folder
from bench.peer_dbos import NOOP_WORKFLOW, dbos_python
from bench.pg_executor import THREADS, check_end, close_side, cpu_seconds, open_side, work
from bench.postgres import cluster

NAME = "pg_peer_dbos"
WHAT = "no-op 5-step workflows on PostgreSQL: ours (flask worker x 4 threads) vs DBOS Transact, same cluster and shape"

PROCESSES = (1, 4)
QUICK_PROCESSES = (1,)
SESSIONS = 200          # workflows (DBOS) / queued sessions (ours) a round
ROUNDS = 3
QUICK_SESSIONS = 100
QUICK_ROUNDS = 1
WARM_UP = 4             # workflows each DBOS process runs before the first round (not timed, checked)
TIMEOUT = 300
GOAL = 1.5

DRIVER = r'''
import json, sys, threading, time
args = json.loads(sys.argv[1])
from dbos import DBOS, DBOSConfig

config: DBOSConfig = {"name": "bench-noop", "system_database_url": args["url"], "log_level": "WARNING",
                      "executor_id": args["executor_id"]}
DBOS(config=config)
''' + NOOP_WORKFLOW + r'''try:
    from dbos._dbos import _get_dbos_instance
    engine = _get_dbos_instance()._sys_db.engine
    with engine.connect() as conn:
        settings = {q: conn.exec_driver_sql(f"SHOW {q}").scalar()
                    for q in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "commit_delay")}
        settings["driver"] = engine.dialect.dbapi.__name__
        settings["pool_size"] = engine.pool.size()
except Exception as exc:  # private API: report, do not fail the run
    settings = {"unverified": repr(exc)}

for _ in range(args["warm_up"]):
    noop_workflow("bench", REQUIREMENTS)
print("ready " + json.dumps(settings), flush=True)

for line in sys.stdin:
    if line.strip() == "stop":
        break
    print("done " + json.dumps({"errors": run_workflows(int(line), args["threads"])}), flush=True)
DBOS.destroy()
'''


class DbosFleet:
    """`count` DBOS processes on one system database, each taking its share of a round's workflows."""

    def __init__(self, python, url, count, folder):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DBOS_", "PYTHON"))}
        self.procs, self.logs = [], []
        for i in range(count):
            log = open(folder / f"dbos-{count}-{i}.log", "ab")
            self.logs.append(log)
            args = {"url": url, "executor_id": f"bench-{count}-{i}", "threads": THREADS, "warm_up": WARM_UP}
            self.procs.append(subprocess.Popen([python, "-c", DRIVER, json.dumps(args)], cwd=folder, env=env,
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                               start_new_session=True))
        self.settings = [self._expect(p, "ready") for p in self.procs]

    def _expect(self, proc, word, timeout=TIMEOUT):
        """The JSON after `word` on the process's next line; fails (with its log) on anything else."""
        found = {}

        def read():
            found["line"] = proc.stdout.readline()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        line = found.get("line", "")
        if not line.startswith(word + " "):
            self.kill()
            raise RuntimeError(f"DBOS process said {line!r}, expected {word!r}:\n{self.log_tail()}")
        return json.loads(line[len(word) + 1:])

    def round(self, workflows, pg) -> tuple[float, int, int, float]:
        """Seconds until every process has run its share of `workflows` workflows; then the round's write
        transactions and WAL bytes (cluster-wide) and the processes' CPU seconds."""
        activity, cpu = pg.activity(), cpu_seconds(p.pid for p in self.procs)
        shares = [workflows // len(self.procs) + (i < workflows % len(self.procs)) for i in range(len(self.procs))]
        started = time.perf_counter()
        for proc, share in zip(self.procs, shares):
            proc.stdin.write(f"{share}\n")
            proc.stdin.flush()
        reports = [self._expect(p, "done") for p in self.procs]
        elapsed = time.perf_counter() - started
        xids, wal = (after - before for after, before in zip(pg.activity(), activity))
        cpu = cpu_seconds(p.pid for p in self.procs) - cpu
        errors = [e for r in reports for e in r["errors"]]
        if errors:
            raise RuntimeError(f"DBOS workflows failed: {errors[:3]}")
        return elapsed, xids, wal, cpu

    def stop(self):
        for proc in self.procs:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        statuses = [proc.wait(timeout=60) for proc in self.procs]
        for log in self.logs:
            log.close()
        if any(statuses):
            raise RuntimeError(f"DBOS processes exited {statuses}:\n{self.log_tail()}")

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()

    def log_tail(self, lines=20) -> str:
        out = []
        for log in self.logs:
            log.flush()
            try:
                with open(log.name, errors="replace") as f:
                    out.append(f"--- {os.path.basename(log.name)}\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "\n".join(out)


def check_dbos(pg, database, workflows):
    """Every DBOS workflow SUCCESS, each with exactly its 5 step outputs."""
    with pg.connect(database) as conn:
        by_status = dict(conn.execute("SELECT status, count(*) FROM dbos.workflow_status GROUP BY status").fetchall())
        outputs = conn.execute("SELECT count(*) FROM dbos.operation_outputs").fetchone()[0]
        uneven = conn.execute("SELECT count(*) FROM (SELECT workflow_uuid FROM dbos.operation_outputs "
                              "GROUP BY workflow_uuid HAVING count(*) <> 5) AS w").fetchone()[0]
    if by_status != {"SUCCESS": workflows} or outputs != 5 * workflows or uneven:
        raise RuntimeError(f"DBOS: expected {workflows} SUCCESS workflows with 5 step outputs each, found "
                           f"{by_status}, {outputs} outputs, {uneven} workflows without exactly 5")


def describe(settings: dict) -> str:
    if "unverified" in settings:
        return f"settings unverified ({settings['unverified']})"
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def compare(pg, python, folder, processes, sessions, rounds):
    database = f"dbos_{os.getpid()}_{processes}"  # DBOS makes it
    dbos_rounds = []
    with ExitStack() as opened:  # everything started is stopped on the way out, whatever fails
        opened.callback(pg.drop_database, database)
        dbos = DbosFleet(python, pg.url(database, driver=None), processes, folder)
        opened.callback(dbos.kill)
        ours = open_side(pg, folder, f"ours w{processes} (peer)", processes)
        opened.callback(close_side, pg, ours)
        ours.batch(2 * processes * THREADS, timed=False)  # warm-up, as DBOS's
        for r in range(rounds):
            for side in (("ours", "dbos") if r % 2 == 0 else ("dbos", "ours")):
                if side == "ours":
                    ours.batch(sessions)
                else:
                    dbos_rounds.append(dbos.round(sessions, pg))
        check_end(ours)
        ours_rates, ours_work = list(ours.rates), ours.median_batch()[1]
        dbos.stop()
        check_dbos(pg, database, processes * WARM_UP + rounds * sessions)
        settings = dbos.settings[0]
    steps = sessions * 5
    dbos_rates = [steps / elapsed for elapsed, *_ in dbos_rounds]
    _, xids, wal, cpu = sorted(dbos_rounds)[len(dbos_rounds) // 2]
    return (ours_rates, dbos_rates, settings, work(ours_work),
            work({"xids": xids / steps, "wal": wal / steps, "cpu": cpu / steps}), ours.problems)


def run(quick: bool) -> list[Result]:
    sessions = QUICK_SESSIONS if quick else SESSIONS
    rounds = QUICK_ROUNDS if quick else ROUNDS
    python = dbos_python()
    pg = cluster()
    results = []
    with temporary_folder("bench-pg-peer-dbos-") as folder:
        for processes in (QUICK_PROCESSES if quick else PROCESSES):
            ours_rates, dbos_rates, settings, ours_work, dbos_work, problems = compare(pg, python, folder, processes,
                                                                                       sessions, rounds)
            ours, dbos = median(ours_rates), median(dbos_rates)
            print(f"   .. {processes} process(es) x {THREADS} threads: ours {ours:,.0f} steps/s "
                  f"{[round(r) for r in ours_rates]}, DBOS {dbos:,.0f} steps/s {[round(r) for r in dbos_rates]} "
                  f"(DBOS's engine: {describe(settings)}); per step: ours {ours_work}, DBOS {dbos_work}", flush=True)
            if settings.get("fsync") != "on" or settings.get("synchronous_commit") != "on":
                raise RuntimeError(f"DBOS did not run with fsync and synchronous_commit on: {settings}")
            results.append(Result(
                NAME, f"vs DBOS, {processes} process(es) x {THREADS} threads", ours, dbos, "steps/s", ours / dbos,
                f">= {GOAL:g}x DBOS", ours / dbos >= GOAL, baseline_name="DBOS 3.4 on the same PostgreSQL",
                note=(f"{sessions} workflows / sessions x 5 no-op steps a round, median of {rounds} alternating rounds "
                      f"(ours {[round(r) for r in ours_rates]}, DBOS {[round(r) for r in dbos_rates]}); "
                      "ours: flask worker, "
                      f"enqueue commit to all completed; DBOS: {THREADS} threads a process calling the workflow "
                      f"directly (no queue); DBOS's engine: {describe(settings)}. Per step: ours {ours_work}, "
                      f"DBOS {dbos_work}" + (f". STOPPING FAILED: {'; '.join(problems)}" if problems else ""))))
    return results
