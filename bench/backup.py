"""`flask sessions backup` of a 100,000-session database: time and size, against a plain copy of the same file.

The database is made through the real schema: `fill_sessions` for the session rows, and every
session gets a row per step (the first five steps of the default pipeline), each with a JSON output
of 1-2 KB, copied in SQL from one session's template rows; then its WAL is checkpointed, as a
long-running deployment's would be.

Three ways to copy it are timed, alternating, a few times each (medians):
- the command as an operator runs it: `flask --app wsgi sessions backup PATH` as a subprocess with
  DATABASE_URL set (wall time, Python start-up and app creation included);
- `backup_sqlite()` in this process (SQLite's online backup, integrity check, journal_mode=DELETE,
  fsync, link into place);
- the baseline: a plain copy of the file (shutil.copyfile, then fsync), what an operator might do by
  hand, which is not consistent while the service writes.
Every backup's session count is checked, and one backup is opened again and checked on its own.
"""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, Result, fill_sessions, median, migrated_app, temporary_folder

NAME = "backup"
WHAT = "flask sessions backup of a 100,000-session database: time and size, against a plain copy of the same file"

FULL_SIZE, QUICK_SIZE = 100_000, 10_000
# Rounds of the three ways, alternating: a full round writes the ~1 GB database three times (~35 s, shared machine).
ROUNDS, QUICK_ROUNDS = 2, 2
# The default pipeline's first five steps: the sessions are completed runs of this pipeline.
PIPELINE = ["app.pipeline.planner:Planner", "app.pipeline.data_collection:DataCollection",
            "app.pipeline.api_research:ApiResearch", "app.pipeline.analyst:Analyst", "app.pipeline.writer:Writer"]
BACKED_UP = re.compile(r"Backed up (\d+) sessions? \(([\d.]+) MB, migration (\w+)\) .* integrity check ok\.")


def step_output(name: str, position: int) -> dict:
    """A step's JSON output of a realistic small size: 1.1 KB stored for the first step to 1.9 KB for the fifth."""
    items = 6 + 3 * position // 2
    return {
        "step": name,
        "topic": "Electric Vehicle Market Analysis",
        "summary": ("Sales of battery electric vehicles grew in every region surveyed; charging "
                    "infrastructure and battery costs remain the main constraints on adoption."),
        "items": [{"title": f"{name} finding {i + 1}", "source": f"library/ev-market-{i + 1}.md",
                   "score": round(0.5 + i / 20, 2), "text": "Market share rose year on year in the segment."}
                  for i in range(items)],
    }


def fill_steps(store) -> tuple[int, int]:
    """Five step rows for every session: one session's rows written by SQLAlchemy, copied to the rest in SQL.

    (step rows, bytes of JSON output per session).
    """
    from sqlalchemy import insert, text

    from app.database import write_transaction
    from app.models import Step, utcnow

    now = utcnow()
    outputs = [step_output(name, i) for i, name in enumerate(store.step_names)]
    with write_transaction(store.engine) as conn:
        template = conn.execute(text("SELECT id FROM sessions ORDER BY created_at LIMIT 1")).scalar_one()
        conn.execute(insert(Step.__table__), [
            dict(session_id=template, name=name, position=i, output=output, started_at=now, finished_at=now)
            for i, (name, output) in enumerate(zip(store.step_names, outputs))])
        conn.execute(text(
            "INSERT INTO steps (session_id, name, position, output, started_at, finished_at) "
            "SELECT s.id, t.name, t.position, t.output, t.started_at, t.finished_at "
            "FROM sessions AS s, steps AS t WHERE t.session_id = :template AND s.id != :template "
            "ORDER BY s.rowid, t.position"), {"template": template})
        steps = conn.execute(text("SELECT count(*) FROM steps")).scalar_one()
        per_session = conn.execute(text("SELECT sum(length(output)) FROM steps WHERE session_id = :template"),
                                   {"template": template}).scalar_one()
    return steps, per_session


def build(path: Path, count: int) -> dict:
    """A migrated, checkpointed database of `count` completed sessions with five steps each."""
    from app.runner import get_store

    started = time.monotonic()
    app = migrated_app(path, pipeline=PIPELINE)
    store = get_store(app)
    assert len(store.step_names) == 5, store.step_names
    fill_sessions(store, count, status="completed", steps=store.step_names)
    steps, per_session = fill_steps(store)
    conn = store.engine.raw_connection()
    try:
        cursor = conn.cursor()
        busy, wal_pages, moved = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        sessions = cursor.execute("SELECT count(*) FROM sessions").fetchone()[0]
        page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
    finally:
        conn.close()
    store.engine.dispose()
    if busy:
        raise RuntimeError("the WAL checkpoint was blocked")
    wal = Path(f"{path}-wal")
    info = dict(sessions=sessions, steps=steps, per_session=per_session, page_size=page_size, pages=pages,
                size=path.stat().st_size, wal=wal.stat().st_size if wal.exists() else 0,
                seconds=time.monotonic() - started)
    print(f"   (built {sessions:,} sessions, {steps:,} steps, {info['size'] / 1e6:,.0f} MB in "
          f"{info['seconds']:.0f} s)", flush=True)
    return info


def plain_copy(source: Path, target: Path) -> None:
    """What an operator might do by hand: copy the file, and flush it to disk."""
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def command_env(database: Path) -> dict:
    """An operator's shell: the inherited environment, with only DATABASE_URL set for the service."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "PYTHONPATH") and not k.startswith(("REPORTS_", "FLASK_"))}
    env["DATABASE_URL"] = f"sqlite:///{database}"
    return env


def check(path: Path) -> tuple[int, int, str, str]:
    """Open a backup on its own: (sessions, steps, integrity_check, journal_mode)."""
    from app.database import sqlite_dbapi

    conn = sqlite_dbapi().connect(str(path))
    try:
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        steps = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
        integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()[:5])
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    return sessions, steps, integrity, mode


def run(quick: bool) -> list[Result]:
    from servers import BIN

    from app.backup import backup_sqlite

    count = QUICK_SIZE if quick else FULL_SIZE
    rounds = QUICK_ROUNDS if quick else ROUNDS
    with temporary_folder("bench-backup-") as tmp:
        source = tmp / "sessions.db"
        made = build(source, count)
        env = command_env(source)
        flask = [str(BIN / "flask"), "--app", "wsgi", "sessions", "backup"]
        times: dict[str, list[float]] = {"copy": [], "backup_sqlite": [], "command": []}
        reported: list[float] = []   # backup_sqlite's own Backup.seconds
        problems: list[str] = []
        sizes: set[int] = set()
        kept = tmp / "kept.db"

        def by_copy(target):
            plain_copy(source, target)

        def by_function(target):
            backup = backup_sqlite(str(source), str(target))
            reported.append(backup.seconds)
            if backup.sessions != made["sessions"]:
                problems.append(f"backup_sqlite counted {backup.sessions:,} sessions")

        def by_command(target):
            done = subprocess.run([*flask, str(target)], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300)
            said = BACKED_UP.search(done.stdout)
            if done.returncode != 0 or not said:  # no backup to time or check: stop here, with what it said
                raise RuntimeError(f"the command exited {done.returncode}: {(done.stdout + done.stderr)[-500:]}")
            if int(said.group(1)) != made["sessions"]:
                problems.append(f"the command counted {said.group(1)} sessions")

        ways = {"copy": by_copy, "backup_sqlite": by_function, "command": by_command}
        order = list(ways)
        for turn in range(rounds):
            for name in order[turn % 3:] + order[:turn % 3]:  # rotate, so no way always goes first
                target = tmp / f"{name}.db"
                started = time.perf_counter()
                ways[name](target)
                times[name].append(time.perf_counter() - started)
                if name != "copy":
                    sizes.add(target.stat().st_size)
                if name == "command" and turn == rounds - 1:
                    target.rename(kept)  # the operator's backup, checked on its own below
                else:
                    target.unlink(missing_ok=True)
        checking = time.perf_counter()
        sessions, steps, integrity, mode = check(kept)
        checked_s = time.perf_counter() - checking

    if sessions != made["sessions"] or steps != made["steps"] or integrity != "ok" or mode != "delete":
        problems.append(f"the kept backup has {sessions:,} sessions, {steps:,} steps, integrity {integrity!r}, "
                        f"journal_mode {mode}")
    copy_s, function_s, command_s = (median(times[k]) for k in ("copy", "backup_sqlite", "command"))
    backup_mb, source_mb = max(sizes) / 1e6, made["size"] / 1e6
    ratio = function_s / copy_s
    verified = not problems
    size = f"{made['sessions']:,} sessions"
    each = "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) + " s" for k, v in times.items())
    database = (f"{made['sessions']:,} completed sessions (fill_sessions) and {made['steps']:,} step rows (5 a "
                f"session, {made['per_session']:,} bytes of JSON output a session), {source_mb:,.0f} MB "
                f"({made['pages']:,} pages of {made['page_size']:,} bytes), WAL checkpointed "
                f"({made['wal']} bytes left), built in {made['seconds']:.0f} s")
    verdict = ("every backup counted all its sessions; the operator's last one, opened on its own, had every session "
               f"and step row, integrity_check ok ({checked_s:.1f} s), journal_mode delete" if verified
               else "NO: " + " | ".join(problems))
    return [
        Result(NAME, f"backup_sqlite, {size}", function_s, copy_s, "s", ratio, "<= 5", verified and ratio <= 5,
               "plain copy + fsync",
               note=(f"{database}. Medians of {rounds} rounds, alternating (seconds: {each}); backup_sqlite's own "
                     f"figure (backup + integrity check + fsync) {median(reported):.2f} s. Verified: {verdict}.")),
        Result(NAME, f"flask sessions backup command, {size}", command_s, copy_s, "s", command_s / copy_s, "-",
               None, "plain copy + fsync",
               note=("`flask --app wsgi sessions backup PATH` with DATABASE_URL set, as a subprocess: wall time, "
                     f"Python start-up and create_app included ({command_s - function_s:+.2f} s against "
                     "backup_sqlite in-process).")),
        Result(NAME, f"backup size, {size}", backup_mb, source_mb, "MB", backup_mb / source_mb, "-", None,
               "database file", note=("the online backup copies every page, so the backup is the file's size; "
                                      "journal_mode=DELETE leaves it one self-contained file.")),
    ]
