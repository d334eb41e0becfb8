"""`flask sessions cleanup --days 0` removing 1,000,000 finished sessions, and the status poll's p99 meanwhile."""
import re
import subprocess
import threading
import time

from bench.common import ROOT, Result, percentile, temporary_folder

NAME = "cleanup"
WHAT = "flask sessions cleanup --days 0 of 1,000,000 finished sessions: duration, and status p99 while it runs"


def poll(client, path, stop: threading.Event, out: list) -> None:
    """GET the status sequentially until told to stop; (monotonic time, ms, HTTP status) of each."""
    while not stop.is_set():
        status, _, seconds, _ = client.get(path)
        out.append((time.monotonic(), seconds * 1000, status))


def watch_counts(db_path, stop: threading.Event, out: list) -> None:
    """Finished sessions left (from session_counts), every 50 ms, on a connection of our own."""
    from app.database import sqlite_dbapi

    conn = sqlite_dbapi().connect(str(db_path), isolation_level=None, timeout=10)
    try:
        while not stop.is_set():
            left = conn.execute("SELECT coalesce(sum(sessions), 0) FROM session_counts "
                                "WHERE status IN ('completed', 'failed', 'cancelled')").fetchone()[0]
            out.append((time.monotonic(), left))
            stop.wait(0.05)
    finally:
        conn.close()


def run(quick: bool) -> list[Result]:
    from servers import BIN

    from bench.listing import (FAST, Http, copy_database, million_database, start_server,
                               store_made_session)
    from bench.common import migrated_app
    from app.runner import get_store

    shared = million_database(quick)
    idle_seconds = 3 if quick else 8
    # Seconds; the whole make bench must stay under 10 minutes. 1,000,000 deletions took 66 s on a quiet
    # machine and ~100 s on a busy one, where the two owner indexes (accounts) cost ~12% more per row.
    limit = 30 if quick else 180
    with temporary_folder() as tmp:
        database = copy_database(shared, tmp)  # cleanup empties it: never the shared one
        app = migrated_app(database.path, pipeline=FAST)
        polled = store_made_session(get_store(app), finish=False)  # generating: cleanup must leave it alone
        get_store(app).engine.dispose()
        server = start_server(database.path, tmp, "cleanup")
        stop = threading.Event()
        threads = []
        try:
            server.start()
            client = Http(server.url)
            path = f"/api/report-status/{polled}"
            for _ in range(20):
                client.get(path)
            polls: list = []
            counts: list = []
            poller = threading.Thread(target=poll, args=(client, path, stop, polls), daemon=True)
            # The watcher runs in the idle phase too, so both phases share the bench process alike.
            watcher = threading.Thread(target=watch_counts, args=(database.path, stop, counts), daemon=True)
            for thread in (poller, watcher):
                thread.start()
                threads.append(thread)
            time.sleep(idle_seconds)
            idle_end = started = time.monotonic()
            process = subprocess.Popen([str(BIN / "flask"), "--app", "wsgi", "sessions", "cleanup", "--days", "0"],
                                       cwd=ROOT, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            try:
                output, _ = process.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                process.kill()  # only the cleanup we started; its open batch rolls back
                output, _ = process.communicate()
                output += f"\n(killed after {limit} s)"
            duration = time.monotonic() - started
            time.sleep(0.2)  # a count after the end
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            after = client.get(path)[0]
            left = client.json("/api/sessions")["total_sessions"]
            client.close()
        finally:
            stop.set()
            server.kill()

    found = re.search(r"Removed (\d+) session", output)
    removed = int(found.group(1)) if found else None
    counts = [(t - started, n) for t, n in counts if t >= started]
    finished_left = counts[-1][1] if counts else shared.sessions
    idle = [ms for t, ms, _ in polls if t <= idle_end]
    during = [ms for t, ms, _ in polls if started <= t <= started + duration]
    bad = sum(1 for t, _, status in polls if status != 200)
    p99_idle, p99_during = percentile(idle, 99), percentile(during, 99)
    batched = len({n for _, n in counts}) > 2  # the finished count went down in steps, not at once
    finished = process.returncode == 0 and removed == shared.sessions and left == 1 and after == 200
    size = f"{shared.sessions:,} finished sessions"
    last_line = output.strip().splitlines()[-1] if output.strip() else "(nothing)"
    if finished:
        outcome = (f"exited 0 after {duration:.1f} s ({shared.sessions / duration:,.0f} sessions/s) and said "
                   f"{last_line!r}")
    else:
        outcome = (f"did NOT finish: exit {process.returncode}, {last_line!r}; "
                   f"{shared.sessions - finished_left:,} of {shared.sessions:,} removed in {duration:.0f} s")
    return [
        Result(NAME, f"status p99 during cleanup, {shared.sessions:,}", p99_during, p99_idle, "ms",
               p99_during / p99_idle, "p99 during cleanup <= 3x idle", p99_during / p99_idle <= 3,
               "status p99, no cleanup",
               note=(f"one client polling a store-made session sequentially over HTTP (gunicorn -w 2): {len(idle)} "
                     f"polls idle (p50 {percentile(idle, 50):.2f} ms), {len(during)} during cleanup (p50 "
                     f"{percentile(during, 50):.2f} ms, max {max(during, default=float('nan')):.1f} ms); "
                     f"{bad} polls answered other than 200.")),
        Result(NAME, f"cleanup duration, {shared.sessions:,}", duration, float("nan"), "s", float("nan"),
               "finishes (in batches)", finished and batched, "-",
               note=(f"{size}: `flask --app wsgi sessions cleanup --days 0` {outcome}; "
                     f"{len({n for _, n in counts})} distinct finished counts seen while it ran "
                     f"({'in batches' if batched else 'NOT seen in batches'}); the generating session polled "
                     f"throughout answered {after} after (total_sessions {left:,} after)."),
               series={"x": [round(t, 2) for t, _ in counts], "y": [n for _, n in counts],
                       "label": "finished sessions left", "xlabel": "seconds since cleanup started",
                       "ylabel": "sessions", "title": f"flask sessions cleanup --days 0, {size}"}),
    ]
