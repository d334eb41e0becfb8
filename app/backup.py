"""Consistent copies of a live SQLite database (`flask sessions backup`).

SQLite's online backup API copies every page in one step, inside one read transaction: in WAL
mode that transaction sees one committed state of the file and blocks no writer, so the copy is
the database as of one instant while the service keeps running. The copy is written beside the
target, checked (`PRAGMA integrity_check`, the migration it is at), made a single self-contained
file (rollback journal, not WAL), flushed to disk, and only then linked into place: a backup that
exists under its final name is a checked one.
"""
import os
import time
from dataclasses import dataclass

from app.database import sqlite_dbapi


class BackupError(Exception):
    """The backup could not be made or did not check out; nothing was left at the target path."""


@dataclass(frozen=True)
class Backup:
    path: str
    size_bytes: int
    sessions: int
    migration: str
    seconds: float


def backup_sqlite(source: str, target: str, busy_timeout_ms: int = 10_000) -> Backup:
    """Copy the SQLite database at `source` to `target` (which must not exist yet), checked."""
    if not os.path.exists(source):
        raise BackupError(f"there is no database at {source}")
    if os.path.exists(target):
        raise BackupError(f"{target} already exists; choose a new name (or remove it first)")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise BackupError(f"the folder {folder} does not exist")
    dbapi = sqlite_dbapi()
    started = time.monotonic()
    partial = f"{target}.partial-{os.getpid()}"
    try:
        if os.path.exists(partial):  # left by a crashed run that had this pid: start afresh
            os.remove(partial)
        src = dbapi.connect(source, timeout=busy_timeout_ms / 1000)
        try:
            copy = dbapi.connect(partial)
            try:
                src.backup(copy)  # pages=-1: all of it in one step, one snapshot
                copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal/-shm beside it
                checked = _check(copy)
            finally:
                copy.close()
        finally:
            src.close()
        _flush(partial)
        os.link(partial, target)  # unlike a rename, fails rather than replace a file made meanwhile
        _flush(folder)
    except FileExistsError:
        raise BackupError(f"{target} appeared while the backup was being made; it was left as it is") from None
    except (OSError, dbapi.Error) as exc:
        if os.path.exists(partial) and os.path.exists(target) and os.path.samefile(partial, target):
            os.remove(target)  # linked but not flushed: not a backup to trust
        raise BackupError(f"{type(exc).__name__}: {exc}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    migration, sessions = checked
    return Backup(target, os.path.getsize(target), sessions, migration, time.monotonic() - started)


def _check(copy) -> tuple[str, int]:
    """The copy's migration and session count, after SQLite's full integrity check passes."""
    problems = [row[0] for row in copy.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise BackupError("the copy failed SQLite's integrity check: " + "; ".join(problems[:5]))
    try:
        migration = copy.execute("SELECT version_num FROM alembic_version").fetchone()
        sessions = copy.execute("SELECT count(*) FROM sessions").fetchone()[0]
    except Exception:
        raise BackupError("the database is not the service's (no migrations or sessions table); "
                          "run `flask --app wsgi db upgrade` first") from None
    if migration is None:
        raise BackupError("the database has no migration recorded; run `flask --app wsgi db upgrade` first")
    return migration[0], sessions


def _flush(path: str) -> None:
    """fsync a file, or a folder so a rename in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
