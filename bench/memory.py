"""Worker RSS after listing and polling at 1,000,000 sessions vs the same requests on an empty database."""
import json
import time

from bench.common import Result, rss_mb, temporary_folder

NAME = "memory"
WHAT = "gunicorn worker RSS after listing and polling at 1,000,000 sessions vs an empty database"


def listing_paths(client, depth: int) -> list[str]:
    """The page URLs of a walk `depth` pages deep (unfiltered and ?status=failed) on this database."""
    paths = []
    for base in ("/api/sessions", "/api/sessions?status=failed"):
        path, sep = base, "&" if "?" in base else "?"
        for _ in range(depth):
            paths.append(path)
            status, body, _, _ = client.get(path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
            cursor = json.loads(body)["next_cursor"]
            if not cursor:
                break
            path = f"{base}{sep}cursor={cursor}"
    return paths


def exercise(client, paths: list[str], session_id: str, rounds: int, polls: int) -> int:
    """The same requests on any database: the listing pages `rounds` times, full and 304 status polls."""
    sent = 0
    status_path = f"/api/report-status/{session_id}"
    etag = client.get(status_path)[3]["ETag"]
    for _ in range(rounds):
        for path in paths:
            client.get(path)
            sent += 1
        for _ in range(polls):
            client.get(status_path)
            client.get(status_path, {"If-None-Match": etag})
            sent += 2
    return sent


def measure(server, client, paths, session_id, rounds, polls) -> tuple[list[float], list[float], int]:
    """(worker RSS at start, worker RSS after the requests, requests sent), MB, workers in pid order."""
    pids = worker_pids_of(server)
    at_start = [rss_mb(pid) for pid in pids]
    sent = exercise(client, paths, session_id, rounds, polls)
    time.sleep(0.5)
    return at_start, [rss_mb(pid) for pid in pids], sent


def worker_pids_of(server, timeout: float = 30.0) -> list[int]:
    """The two workers' pids; the second may still be forking when the first already answers."""
    from bench.listing import worker_pids

    deadline = time.monotonic() + timeout
    while len(pids := worker_pids(server)) != 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected 2 gunicorn workers, found {pids}")
        time.sleep(0.2)
    return pids


def run(quick: bool) -> list[Result]:
    from bench.common import migrated_app
    from bench.listing import FAST, Http, million_database, start_server, store_made_session
    from app.runner import get_store

    database = million_database(quick)
    depth = 20 if quick else 200
    rounds, polls = 2, (100 if quick else 300)
    with temporary_folder() as tmp:
        full_dir, empty_dir = tmp / "full", tmp / "empty"
        full_dir.mkdir()
        empty_dir.mkdir()
        app = migrated_app(empty_dir / "empty.db", pipeline=FAST)
        empty_session = store_made_session(get_store(app))  # something to poll; no other sessions
        get_store(app).engine.dispose()

        server = start_server(database.path, full_dir, "memory-full")
        try:
            server.start()
            client = Http(server.url)
            paths = listing_paths(client, depth)
            full_start, full_after, sent = measure(server, client, paths, database.session_id, rounds, polls)
            client.close()
        finally:
            server.kill()

        server = start_server(empty_dir / "empty.db", empty_dir, "memory-empty")
        try:
            server.start()
            client = Http(server.url)
            listing_paths(client, depth)  # the same warm-up walk (one page each here)
            empty_start, empty_after, _ = measure(server, client, paths, empty_session, rounds, polls)
            client.close()
        finally:
            server.kill()

    figure, baseline = max(full_after), max(empty_after)
    return [Result(
        NAME, f"largest worker RSS, {database.sessions:,} sessions", figure, baseline, "MB", figure / baseline,
        "<= 1.2x", figure / baseline <= 1.2, "same requests, empty database",
        note=(f"{sent + len(paths):,} sequential requests to gunicorn -w 2 on each database (a walk of "
              f"{len(paths)} listing pages, then {rounds} x (the same pages, {polls} status polls, {polls} 304 "
              f"polls)); worker RSS at start / after: "
              f"{database.sessions:,} sessions {[round(x, 1) for x in full_start]} / "
              f"{[round(x, 1) for x in full_after]} MB, empty {[round(x, 1) for x in empty_start]} / "
              f"{[round(x, 1) for x in empty_after]} MB."))]
