"""GET /api/sessions at 1,000,000 sessions: first and deep pages (and with ?status=), p50 and p99 over HTTP.

Also the helpers the other server benchmarks share (cleanup, memory, status_poll, recovery):
`million_database()` fills one database of N sessions per process and hands the same file to
every benchmark that only reads it; `Http` times sequential requests with one client;
`worker_pids()` finds a gunicorn master's workers.
"""
import atexit
import contextlib
import http.client
import json
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bench.common import Result, fill_sessions, migrated_app, percentile, temporary_folder

NAME = "listing"
WHAT = "GET /api/sessions first and ~200-pages-deep page (and ?status=) at 1,000,000 sessions vs the status poll"

FAST = ["agents:First", "agents:Second", "agents:Third"]
FULL_SIZE, QUICK_SIZE = 1_000_000, 10_000
FAILED_SHARE = 10  # one session in ten failed, so ?status=failed is a selective filter


# -- shared helpers -------------------------------------------------------------------------------

@dataclass
class Database:
    path: Path
    sessions: int        # rows in `sessions`, the store-made one included
    session_id: str      # made by the store's own code (create, claim, three step commits): poll this one
    failed: int          # of which failed (the rest completed)


_databases: dict[int, Database] = {}
_folders = contextlib.ExitStack()
atexit.register(_folders.close)


def database_size(quick: bool) -> int:
    return QUICK_SIZE if quick else FULL_SIZE


def million_database(quick: bool) -> Database:
    """A migrated database of 1,000,000 (quick: 10,000) finished sessions, filled once per process.

    Read-only users share it (listing, memory); a benchmark that changes it must copy it first
    (`copy_database`). Its folder is a `temporary_folder()` removed when the process exits.
    """
    count = database_size(quick)
    if count not in _databases:
        folder = _folders.enter_context(temporary_folder("bench-sessions-"))
        _databases[count] = _fill(folder / "sessions.db", count)
    return _databases[count]


def _fill(path: Path, count: int) -> Database:
    from app.runner import get_store

    started = time.monotonic()
    app = migrated_app(path, pipeline=FAST)
    store = get_store(app)
    failed = count // FAILED_SHARE
    fill_sessions(store, count - 1 - failed, status="completed", steps=store.step_names)
    fill_sessions(store, failed, status="failed", steps=store.step_names)
    session_id = store_made_session(store)
    checkpoint(store.engine)
    store.engine.dispose()
    print(f"   (filled {count:,} sessions in {time.monotonic() - started:.0f} s)", flush=True)
    return Database(path, count, session_id, failed)


def store_made_session(store, finish: bool = True) -> str:
    """A session made by the store's own code: create, claim, and (finish) its three steps committed.

    With finish=False it stays `generating`, held by an owner that never expires and can never be
    proven dead, so no runner takes it and `cleanup` (finished sessions only) never removes it.
    """
    from app.models import utcnow
    from app.runner.store import Store

    session_id = store.create("bench: the session that is polled",
                              {"topic": "Electric Vehicle Market Analysis", "page_count": 5, "source_count": 5,
                               "complexity": "moderate"})
    if finish:
        owner = "bench-owner"
        claim = store.claim(owner)
        assert claim is not None and claim.session_id == session_id, claim
        for name in store.step_names:
            store.commit_step(claim, name, {"step": name, "topic": "bench"}, utcnow())
    else:
        holder = Store(store.engine, store.step_names, lease_seconds=10 * 365 * 86400, max_attempts=10)
        claim = holder.claim("bench-holder-never-expires")  # not host:pid:start:nonce, so never "dead"
        assert claim is not None and claim.session_id == session_id, claim
    return session_id


def checkpoint(engine) -> None:
    """Move the WAL into the database file, as a long-running deployment's would be."""
    conn = engine.raw_connection()
    try:
        conn.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def copy_database(database: Database, folder: Path) -> Database:
    """A private copy of a shared database (checkpointed, so the file alone is the whole database)."""
    target = folder / "sessions.db"
    shutil.copyfile(database.path, target)
    return Database(target, database.sessions, database.session_id, database.failed)


class Http:
    """One HTTP client for sequential timed requests (http.client; it reconnects when gunicorn closes)."""

    def __init__(self, url: str, timeout: float = 30):
        parsed = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)

    def get(self, path: str, headers=None) -> tuple[int, bytes, float, dict]:
        """(status, body, seconds, headers) of one GET."""
        started = time.perf_counter()
        try:
            self.conn.request("GET", path, headers=headers or {})
            response = self.conn.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # a stale kept-alive socket: retry once on a new one
            started = time.perf_counter()
            self.conn.request("GET", path, headers=headers or {})
            response = self.conn.getresponse()
            body = response.read()
        elapsed = time.perf_counter() - started
        if response.will_close:
            self.conn.close()
        return response.status, body, elapsed, dict(response.getheaders())

    def json(self, path: str):
        status, body, _, _ = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def close(self):
        self.conn.close()


def worker_pids(server) -> list[int]:
    """The gunicorn workers of a Server: the master's children."""
    master = server.proc.pid
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            return sorted(int(p) for p in f.read().split())
    except OSError:
        pass
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == master:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(found)


def start_server(database_path: Path, log_dir: Path, name: str, extra=None, workers: int = 2,
                 pipeline=FAST, agent_delay: float = 0.0):
    """`gunicorn -w 2 wsgi:app` on a database, through tests/servers.py (migrated first)."""
    from servers import Server, migrate, server_env

    env = server_env(f"sqlite:///{database_path}", pipeline, log_dir / "agents.log", agent_delay, extra)
    migrate(env)
    return Server(env, log_dir, workers=workers, name=name)


# -- the benchmark ------------------------------------------------------------------------------

def walk(client: Http, path: str, pages: int) -> tuple[str, list[float], int, int]:
    """Follow next_cursor `pages` pages deep: (the last cursor, each page's seconds, rows seen, distinct ids)."""
    cursor, seconds, rows, ids = None, [], 0, set()
    sep = "&" if "?" in path else "?"
    for _ in range(pages):
        status, body, elapsed, _ = client.get(path + (f"{sep}cursor={cursor}" if cursor else ""))
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        page = json.loads(body)
        seconds.append(elapsed)
        rows += len(page["sessions"])
        ids.update(s["session_id"] for s in page["sessions"])
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    return cursor, seconds, rows, len(ids)


def run(quick: bool) -> list[Result]:
    database = million_database(quick)
    depth = 20 if quick else 200
    repeats = 100 if quick else 300
    with temporary_folder() as tmp:
        server = start_server(database.path, tmp, "listing")
        try:
            server.start()
            client = Http(server.url)
            status_path = f"/api/report-status/{database.session_id}"
            deep_cursor, walk_all, rows_all, ids_all = walk(client, "/api/sessions", depth)
            deep_failed, walk_failed, rows_failed, ids_failed = walk(client, "/api/sessions?status=failed", depth)
            deep_all, deep_status = f"page {depth} (cursor)", f"?status=failed page {depth}"
            cases = {
                "status poll": status_path,
                "first page": "/api/sessions",
                deep_all: f"/api/sessions?cursor={deep_cursor}",
                "?status=failed first page": "/api/sessions?status=failed",
                deep_status: f"/api/sessions?status=failed&cursor={deep_failed}",
            }
            for path in cases.values():  # warm up, and check each answers
                for _ in range(5):
                    status, body, _, _ = client.get(path)
                    if status != 200:
                        raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
            latencies = {case: [] for case in cases}
            for _ in range(repeats):  # interleaved, so the machine's noise falls on every case alike
                for case, path in cases.items():
                    latencies[case].append(client.get(path)[2] * 1000)
            first = client.json("/api/sessions")
            client.close()
        finally:
            server.kill()

    p50 = {case: percentile(v, 50) for case, v in latencies.items()}
    p99 = {case: percentile(v, 99) for case, v in latencies.items()}
    base = p99["status poll"]
    size = f"{database.sessions:,} sessions"
    duplicates = ""
    if ids_all < rows_all or ids_failed < rows_failed:
        duplicates = (f" Walking {depth} pages saw {rows_all - ids_all} (all) and {rows_failed - ids_failed} "
                      "(failed) rows twice: fill_sessions' copies store created_at without fractional "
                      "seconds, which sorts below the cursor's '.000000', so each page repeats its boundary row.")
    results = []
    for case in list(cases)[1:]:
        series = {}
        if case in (deep_all, deep_status):
            walked = walk_failed if case == deep_status else walk_all
            series = {"x": list(range(1, len(walked) + 1)), "y": [s * 1000 for s in walked],
                      "label": f"{'?status=failed' if case == deep_status else 'all'}: each page of the walk",
                      "xlabel": "page (following next_cursor)", "ylabel": "ms", "logy": True,
                      "title": f"GET /api/sessions latency by page depth, {size}"}
        results.append(Result(
            NAME, f"{case}, p99", p99[case], base, "ms", p99[case] / base, "p99 <= 2x status p99",
            p99[case] <= 2 * base, "status poll p99",
            note=(f"{size} (total_sessions {first['total_sessions']:,}); p50 {p50[case]:.2f} ms vs status p50 "
                  f"{p50['status poll']:.2f} ms; {repeats} sequential requests each over HTTP to gunicorn -w 2, "
                  f"interleaved with the status polls.{duplicates if series else ''}"),
            series=series))
    return results
