"""What every benchmark shares: the result row, timing helpers, and databases of N sessions.

A benchmark module has `NAME`, a one-line `WHAT`, and `run(quick: bool) -> list[Result]`. Each
result is a measured figure next to a baseline measured in the same run (machines here are
shared and noisy, so only ratios mean anything), and the goal it is held to.
"""
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/servers.py starts real gunicorn servers


@dataclass
class Result:
    benchmark: str
    case: str                 # e.g. "full body", "1,000,000 sessions"
    figure: float             # what we measured
    baseline: float           # the same-run baseline
    unit: str                 # "req/s", "us", "ms", "steps/s", "MB"
    ratio: float              # figure / baseline, or baseline / figure: see `higher_is_better`
    goal: str                 # as written in the issue, e.g. ">= 0.8"
    holds: Optional[bool]     # None when the goal is about another row
    baseline_name: str = ""
    note: str = ""
    series: dict = field(default_factory=dict)  # data for a plot: {"x": [...], "y": [...], ...}


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median(values):
    return statistics.median(values)


def timed(fn: Callable, repeat: int) -> list[float]:
    """Seconds each of `repeat` calls took."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


@contextmanager
def temporary_folder(prefix="bench-"):
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


def migrated_app(db, pipeline=None, **config):
    """create_app() on a new database, migrated with `flask db upgrade`'s code.

    `db`: a SQLite file's path, or a database URL (postgresql+psycopg://...: bench/postgres.py).

    Its store has no quotas (REPORTS_MAX_ACTIVE_PER_USER / REPORTS_MAX_QUEUED = None) unless `config`
    sets them: benchmarks queue far more sessions than a deployment lets one client queue.
    """
    import flask_migrate

    from app import create_app

    uri = db if isinstance(db, str) and "://" in db else f"sqlite:///{db}"
    settings = {"SQLALCHEMY_DATABASE_URI": uri, "MAX_ACTIVE_PER_USER": None,
                "MAX_QUEUED": None, **config}
    if pipeline is not None:
        settings["PIPELINE"] = pipeline
    app = create_app(settings)
    with app.app_context():
        flask_migrate.upgrade()
    return app


def fill_sessions(store, count, status="completed", steps=("s0", "s1", "s2"), owner=None):
    """`count` sessions of `owner` (default: no one) through the real schema, fast: one made by the store's
    own code, copied in SQL.

    The copies get fresh UUID4-shaped ids and creation times one second apart (newest last), so
    listing and keyset paging see realistic rows; everything else is the template's stored values,
    status document included (it names the template's id): poll sessions you made with the store.
    The (owner, status) row of session_counts moves by `count`, and queued sessions give their
    owner a place in queue_turns if it has none, as Store.create does.
    1,000,000 sessions take about 15 s and 1 GB. SQLite or PostgreSQL (the store's engine says which).
    """
    from sqlalchemy import insert, text, update

    from app.database import insert_or_ignore, write_transaction
    from app.models import NO_OWNER, QueueTurn, ReportSession, SessionCount, utcnow

    owner = NO_OWNER if owner is None else owner
    now = utcnow()
    template = dict(id=str(uuid.uuid4()), status=status, user_request="bench", requirements={"topic": "bench"},
                    topic="bench", owner=owner, current_agent=None, progress_message=None, status_fields={},
                    error=None, failed_step=None, created_at=now, updated_at=now,
                    finished_at=now if status in ("completed", "failed", "cancelled") else None, lease_owner=None,
                    lease_expires_at=None, attempts=0, cancel_requested=False, version=1)
    columns = [c.name for c in ReportSession.__table__.columns if c.name not in ("id", "created_at")]
    uuid_sql = ("lower(substr(h,1,8)||'-'||substr(h,9,4)||'-4'||substr(h,14,3)||'-'||"
                "substr('89ab', 1 + (abs(random()) % 4), 1)||substr(h,18,3)||'-'||substr(h,21,12))")
    counts = SessionCount.__table__
    with write_transaction(store.engine) as conn:
        conn.execute(insert(ReportSession.__table__).values(
            status_document=store.render(template, list(steps)), **template))
        if count > 1 and conn.dialect.name == "postgresql":
            conn.execute(text(
                f"INSERT INTO sessions (id, created_at, {', '.join(columns)}) "
                f"SELECT gen_random_uuid()::text, t.created_at - make_interval(secs => :copies - i + 1), "
                f"{', '.join('t.' + c for c in columns)} "
                f"FROM generate_series(1, :copies) AS n(i), sessions AS t WHERE t.id = :template"
            ), {"copies": count - 1, "template": template["id"]})
        elif count > 1:
            conn.execute(text(
                f"WITH RECURSIVE n(i, h) AS (SELECT 1, hex(randomblob(16)) "
                f"UNION ALL SELECT i + 1, hex(randomblob(16)) FROM n WHERE i < :copies) "
                f"INSERT INTO sessions (id, created_at, {', '.join(columns)}) "
                f"SELECT {uuid_sql}, datetime(t.created_at, '-' || (:copies - i + 1) || ' seconds') || '.000000', "
                f"{', '.join('t.' + c for c in columns)} "
                f"FROM n, sessions AS t WHERE t.id = :template"
            ), {"copies": count - 1, "template": template["id"]})
        # As Store._count: the (owner, status) row, made if this owner has none yet.
        moved = conn.execute(update(counts).where(counts.c.owner == owner, counts.c.status == status)
                             .values(sessions=counts.c.sessions + count)).rowcount
        if not moved:
            conn.execute(insert(counts).values(owner=owner, status=status, sessions=count))
        if status == "queued":
            conn.execute(insert_or_ignore(QueueTurn.__table__, conn.dialect)
                         .values(owner=owner, waiting=True, last_turn_at=0.0, joined_at=time.time()))
            conn.execute(update(QueueTurn.__table__).where(QueueTurn.owner == owner).values(waiting=True))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_count() -> int:
    return os.cpu_count() or 1
