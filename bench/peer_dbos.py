"""The same no-op 5-step workflow through DBOS Transact (SQLite system database), next to ours.

DBOS is installed only for this benchmark, into its own virtualenv (.venv-bench-dbos/ in the
project root, made on first use with `python3 -m venv` and pip), and runs in a subprocess of that
virtualenv's python, so nothing of it reaches the app's environment.

DBOS side: one process, `@DBOS.workflow()` calling five `@DBOS.step()` functions that return {},
run by 4 threads calling the workflow directly (the runner's default is 4 threads a worker), the
clock around all of them. Its SQLite system database is configured as DBOS documents it
(system_database_url="sqlite:///...") and run twice:
- as shipped: DBOS's own engine set-up (stdlib sqlite3; BEGIN IMMEDIATE, busy_timeout and
  foreign_keys on connect) and SQLite's defaults: a rollback journal and synchronous=FULL;
- with equal pragmas: the same plus, on every connection its engine opens, journal_mode=WAL and
  synchronous=NORMAL (an SQLAlchemy "connect" listener on all engines; DBOS's own listener still
  runs), and the same SQLite library the app uses (pysqlite3, passed as the engine's `module`
  through DBOSConfig's db_engine_kwargs), so both sides make the same durability promise.
The pragmas in force are read back from DBOS's own engine and printed.

Ours: bench/executor.py's `gunicorn -w 1` run with the same number of sessions.
"""
import json
import os
import shutil
import subprocess

from bench.common import ROOT, Result, temporary_folder
from bench.executor import server_steps_per_second

NAME = "peer_dbos"
WHAT = "no-op 5-step workflows/s: ours (gunicorn -w 1) vs DBOS Transact on SQLite, equal pragmas and as shipped"

VENV = ROOT / ".venv-bench-dbos"
REQUIREMENTS = ["dbos==3.4.0", "pysqlite3"]
SESSIONS = 300          # workflows (DBOS) / sessions per batch (ours, as bench/executor.py)
OURS_BATCHES = 2
QUICK_SESSIONS = 80
SHIPPED_MAX = 200       # as shipped, every commit waits for fsync: fewer workflows, the same per-step figure
THREADS = 4
GOAL = 1.5

# The workflow both DBOS drivers run (this one on SQLite, pg_peer_dbos's on PostgreSQL), after DBOS(config=...),
# and how they run a batch of them on threads (the driver imports threading).
NOOP_WORKFLOW = r'''
def _step(n):
    @DBOS.step(name=f"n{n}")
    def step():
        return {}
    return step

STEPS = [_step(n) for n in range(1, 6)]

@DBOS.workflow()
def noop_workflow(user_request, requirements):
    for step in STEPS:
        step()
    return None

REQUIREMENTS = {"topic": "bench", "page_count": 2, "source_count": 2, "complexity": "simple"}

def run_workflows(count, threads):
    """Run `count` workflows on `threads` threads; the first errors (a thread stops at its first)."""
    remaining = iter(range(count))
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                i = next(remaining, None)
            if i is None:
                return
            try:
                noop_workflow("bench", REQUIREMENTS)
            except Exception as exc:
                errors.append(repr(exc))
                return

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors[:3]

DBOS.launch()
'''

DRIVER = r'''
import json, os, sys, threading, time
args = json.loads(sys.argv[1])
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig

path, mode, workflows, threads = args["db"], args["mode"], args["workflows"], args["threads"]
config: DBOSConfig = {"name": "bench-noop", "system_database_url": f"sqlite:///{path}", "log_level": "WARNING"}
if mode == "equal":
    from pysqlite3 import dbapi2
    config["db_engine_kwargs"] = {"module": dbapi2}

    @sa.event.listens_for(sa.engine.Engine, "connect")
    def _equal_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

DBOS(config=config)
''' + NOOP_WORKFLOW + r'''try:
    from dbos._dbos import _get_dbos_instance
    engine = _get_dbos_instance()._sys_db.engine
    with engine.connect() as conn:
        pragmas = {q: conn.exec_driver_sql(f"PRAGMA {q}").scalar() for q in ("journal_mode", "synchronous")}
        pragmas["sqlite"] = conn.exec_driver_sql("SELECT sqlite_version()").scalar()
        pragmas["driver"] = engine.dialect.dbapi.__name__
except Exception as exc:  # private API: report, do not fail the run
    pragmas = {"unverified": repr(exc)}

for _ in range(4):  # warm-up
    noop_workflow("bench", REQUIREMENTS)

started = time.perf_counter()
errors = run_workflows(workflows, threads)
elapsed = time.perf_counter() - started

with engine.connect() as conn:
    done = conn.exec_driver_sql("SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'").scalar()
    outputs = conn.exec_driver_sql("SELECT count(*) FROM operation_outputs").scalar()
DBOS.destroy()
print(json.dumps({"elapsed": elapsed, "workflows": workflows, "steps": workflows * len(STEPS), "done": done,
                  "outputs": outputs, "pragmas": pragmas, "errors": errors}))
'''


def dbos_python() -> str:
    """The bench virtualenv's python with DBOS installed, making the virtualenv on first use."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import dbos, pysqlite3, importlib.metadata as m; print(m.version('dbos'))"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    print(f"   .. installing {' '.join(REQUIREMENTS)} into {VENV.name}/ (first run only)", flush=True)
    base = shutil.which("python3") or "python3"
    for command in ([base, "-m", "venv", str(VENV)],
                    [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    subprocess.run(check, check=True, capture_output=True)
    return str(python)


def dbos_run(python, folder, mode, workflows, threads=THREADS) -> dict:
    db = folder / f"dbos-{mode}.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBOS_", "PYTHON"))}
    done = subprocess.run([python, "-c", DRIVER, json.dumps({"db": str(db), "mode": mode, "workflows": workflows,
                                                             "threads": threads})],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"DBOS ({mode}) exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    expected = workflows + 4  # + warm-up
    if found["errors"] or found["done"] != expected or found["outputs"] != expected * 5:
        raise RuntimeError(f"DBOS ({mode}) did not run every step once: {found}")
    found["rate"] = found["steps"] / found["elapsed"]
    return found


def describe(pragmas: dict) -> str:
    if "journal_mode" not in pragmas:
        return f"pragmas unverified ({pragmas})"
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(pragmas["synchronous"], pragmas["synchronous"])
    return (f"journal_mode={pragmas['journal_mode']}, synchronous={sync}, SQLite {pragmas['sqlite']} "
            f"via {pragmas['driver']}")


def run(quick: bool) -> list[Result]:
    sessions = QUICK_SESSIONS if quick else SESSIONS
    python = dbos_python()
    with temporary_folder("bench-peer-dbos-") as folder:
        equal = dbos_run(python, folder, "equal", sessions)
        print(f"   .. DBOS, equal pragmas: {equal['rate']:,.0f} steps/s ({describe(equal['pragmas'])})", flush=True)
        if equal["pragmas"].get("journal_mode") != "wal" or equal["pragmas"].get("synchronous") != 1:
            raise RuntimeError(f"DBOS did not run with WAL + synchronous=NORMAL: {equal['pragmas']}")
        ours, details = server_steps_per_second(folder, 1, sessions, 1 if quick else OURS_BATCHES,
                                                name="peer-dbos")
        print(f"   .. ours, gunicorn -w 1: {ours:,.0f} steps/s", flush=True)
        shipped = dbos_run(python, folder, "shipped", min(sessions, SHIPPED_MAX))
        print(f"   .. DBOS as shipped: {shipped['rate']:,.0f} steps/s ({describe(shipped['pragmas'])})", flush=True)
    common = (f"{sessions} workflows x 5 no-op steps; DBOS: {THREADS} threads calling the workflow in one process; "
              f"ours: gunicorn -w 1, 4 runner threads, enqueue commit to all completed")
    return [
        Result(NAME, "vs DBOS, equal pragmas", ours, equal["rate"], "steps/s", ours / equal["rate"],
               f">= {GOAL:g}x DBOS", ours / equal["rate"] >= GOAL, baseline_name="DBOS 3.4, WAL + NORMAL",
               note=f"{common}; DBOS {describe(equal['pragmas'])}"),
        Result(NAME, "vs DBOS as shipped", ours, shipped["rate"], "steps/s", ours / shipped["rate"], "-", None,
               baseline_name="DBOS 3.4 as shipped",
               note=f"DBOS {describe(shipped['pragmas'])}; {shipped['workflows']} workflows"),
    ]
