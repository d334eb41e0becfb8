"""Cost of one step commit (step INSERT + fenced session UPDATE) with 100 and with 100,000 sessions stored.

Run: .venv/bin/python bench/step_commit.py [--sizes 100,100000] [--commits 2000]
Prints microseconds per commit at each size and the ratio to the smallest size (same run, same machine).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate  # noqa: E402
from sqlalchemy import insert, update  # noqa: E402

from app import create_app  # noqa: E402
from app.database import write_transaction  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import ReportSession, SessionCount, utcnow  # noqa: E402

STEPS = [f"s{i}" for i in range(10)]


def make_app(path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}", "PIPELINE": ["app.pipeline.planner:Planner"]})
    with app.app_context():
        flask_migrate.upgrade()
    store = app.extensions["report_store"]
    store.step_names = STEPS
    return app, store


def fill(store, count):
    """`count` finished sessions through the real schema, in one transaction."""
    now = utcnow()
    rows = []
    for _ in range(count):
        sid = str(uuid.uuid4())
        row = dict(id=sid, status="completed", user_request="bench", requirements={"topic": "bench"}, topic="bench",
                   current_agent=None, progress_message=None, status_fields={}, error=None, failed_step=None,
                   created_at=now, updated_at=now, finished_at=now,
                   lease_owner=None, lease_expires_at=None, attempts=0, cancel_requested=False, version=1)
        rows.append(dict(row, status_document=store.render(row, STEPS)))
    with write_transaction(store.engine) as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(ReportSession.__table__), rows[start:start + 5000])
        conn.execute(update(SessionCount.__table__).where(SessionCount.status == "completed")
                     .values(sessions=SessionCount.sessions + count))


def measure(store, commits):
    per_session = len(STEPS)
    sessions = [store.create("bench", {"topic": "bench"}) for _ in range(commits // per_session)]
    timings = []
    for sid in sessions:
        claim = store.claim("bench-owner")
        assert claim.session_id == sid
        for name in STEPS:
            started = time.perf_counter()
            store.commit_step(sid, "bench-owner", name, {"step": name, "text": "x" * 200}, utcnow())
            timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6, statistics.mean(timings) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,100000")
    parser.add_argument("--commits", type=int, default=2000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            path = os.path.join(tmp, f"bench-{size}.db")
            app, store = make_app(path)
            fill(store, size)
            median, mean = measure(store, args.commits)
            results.append((size, median, mean))
            with app.app_context():
                db.engine.dispose()
    base = results[0][1]
    for size, median, mean in results:
        print(f"step commit with {size:>9,} sessions stored: median {median:7.0f} us, mean {mean:7.0f} us, "
              f"{median / base:.2f}x the {results[0][0]:,}-session median")
    print(json.dumps({str(s): round(m) for s, m, _ in results}))


if __name__ == "__main__":
    main()
