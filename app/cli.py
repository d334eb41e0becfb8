"""`flask sessions ...` and `flask users ...`: operator commands for sessions and accounts.

The CLI acts as the operator: it sees every session, whoever owns it.
"""
import json
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import click
from flask import current_app
from flask.cli import AppGroup

from app.accounts.users import MIN_PASSWORD, AccountError
from app.models import STATUSES
from app.runner import get_reads, get_store

sessions_cli = AppGroup("sessions", help="Inspect and maintain report sessions.")
users_cli = AppGroup("users", help="Manage accounts. While none exists the service is open to anyone who reaches it; "
                                   "the first one closes it.")

# Statuses of the old JSON store, mapped to ours; anything else marks the file as not ours.
OLD_STATUSES = {"queued": "queued", "pending": "queued", "generating": "generating", "running": "generating",
                "in_progress": "generating", "completed": "completed", "done": "completed", "failed": "failed",
                "error": "failed", "cancelled": "cancelled", "canceled": "cancelled"}


@sessions_cli.command("cleanup")
@click.option("--days", type=click.IntRange(min=0, max=36_500), required=True,
              help="Remove finished sessions last updated more than this many days ago (0: all finished).")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
def cleanup(days, dry_run):
    """Delete finished (completed, failed, cancelled) sessions; queued and running ones are never touched."""
    count = get_store(current_app).cleanup(days, dry_run=dry_run)
    noun = "session" if count == 1 else "sessions"
    age = "finished" if days == 0 else f"finished and older than {days} days"
    if dry_run:
        click.echo(f"Would remove {count} {noun} ({age}). Dry run: nothing was deleted.")
    else:
        click.echo(f"Removed {count} {noun} ({age}).")


@sessions_cli.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
def backup(path):
    """Write a consistent, checked copy of the SQLite database to PATH while the service runs.

    To restore: stop the service, remove the database's -wal and -shm files, copy the backup over
    the database file, start the service. On PostgreSQL use pg_dump instead.
    """
    from app.backup import BackupError, backup_sqlite
    from app.extensions import db

    url = db.engine.url  # as the service opens it (a relative SQLite path is under instance/)
    if url.get_backend_name() != "sqlite":
        where = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
        raise click.ClickException(
            f"The database is {url.get_backend_name()}, which this command does not copy: back it up with "
            f"PostgreSQL's own tools, for example `pg_dump --format=custom --file={path} '{where}'` "
            "(consistent while the service runs), and restore it with pg_restore.")
    if url.database in (None, "", ":memory:"):
        raise click.ClickException("The database is in memory: there is nothing on disk to back up.")
    try:
        made = backup_sqlite(url.database, path, current_app.config["SQLITE_BUSY_TIMEOUT_MS"])
    except BackupError as exc:
        raise click.ClickException(f"No backup written: {exc}.") from None
    noun = "session" if made.sessions == 1 else "sessions"
    click.echo(f"Backed up {made.sessions} {noun} ({made.size_bytes / 1e6:.1f} MB, migration {made.migration}) "
               f"to {made.path} in {made.seconds:.1f} s; integrity check ok.")


@sessions_cli.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def list_sessions(status, limit):
    """List sessions, newest first."""
    rows = get_reads(current_app).page(limit, status).sessions
    for row in rows:
        started_at = datetime.fromisoformat(row["started_at"])
        click.echo(f"{row['session_id']}  {row['status']:<10}  {started_at:%Y-%m-%d %H:%M}  "
                   f"{row['current_agent'] or '-':<16}  {row['owner'] or '-':<12}  {row['topic']}")
    click.echo(f"{len(rows)} session{'s' if len(rows) != 1 else ''} shown.")


@sessions_cli.command("show")
@click.argument("session_id")
def show(session_id):
    """Print a session's status document as JSON."""
    found = get_reads(current_app).status(session_id)
    if found is None:
        raise click.ClickException(f"Session '{session_id}' not found.")
    click.echo(json.dumps(json.loads(found.document), indent=2))


@sessions_cli.command("import-json")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def import_json(path):
    """Import sessions from the old JSON store (data/sessions/states.json); safe to run twice.

    Finished sessions keep their status and list of completed steps (the old store kept no step
    outputs, so they have no report, and a retry runs them from the start). Unfinished ones are
    queued to run again from the start.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        sessions = [_from_old(key, value) for key, value in _entries(data)]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise click.ClickException(f"{path} is not a valid sessions file, nothing imported: {exc}")
    requeued = sum(1 for s in sessions if s["status"] == "queued")
    imported, skipped = get_store(current_app).import_sessions(sessions)
    click.echo(f"Imported {len(imported)} sessions ({requeued} unfinished ones queued to run again); "
               f"skipped {len(skipped)} already present.")


def _entries(data):
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of session id -> session")
    return data.items()


def _from_old(key, old) -> dict:
    """One old-format session as a row for Store.import_sessions, or ValueError saying what is wrong."""
    if not isinstance(old, dict):
        raise ValueError(f"session {key!r} is not an object")
    session_id = old.get("session_id", key)
    try:
        uuid.UUID(str(session_id))
    except ValueError:
        raise ValueError(f"session {key!r} has an invalid session_id {session_id!r}") from None
    if session_id != key:
        raise ValueError(f"session {key!r} names a different session_id {session_id!r}")
    status = OLD_STATUSES.get(str(old.get("status", "")).lower())
    if status is None:
        raise ValueError(f"session {key!r} has an unknown status {old.get('status')!r}")
    requirements = old.get("report_requirements") or {}
    user_request = old.get("user_request")
    if not isinstance(requirements, dict) or not isinstance(user_request, str):
        raise ValueError(f"session {key!r} needs a user_request string and a report_requirements object")
    completed = old.get("completed_tasks") or []
    if not isinstance(completed, list) or not all(isinstance(t, str) for t in completed) \
            or len(set(completed)) != len(completed):
        raise ValueError(f"session {key!r} has invalid completed_tasks {completed!r}")
    created_at = _old_time(old.get("started_at"), key, "started_at")
    updated_at = _old_time(old.get("updated_at") or old.get("started_at"), key, "updated_at")
    finished = status in ("completed", "failed", "cancelled")
    if not finished:
        # The old store kept no step outputs to resume from: run it again from the first step.
        status, completed = "queued", []
    return {
        "id": session_id, "status": status, "user_request": user_request, "requirements": requirements,
        "topic": str(requirements.get("topic") or user_request)[:200],
        "current_agent": old.get("current_agent") if finished else None, "error": old.get("error"),
        "failed_step": None, "created_at": created_at, "updated_at": updated_at,
        "finished_at": updated_at if finished else None, "completed_tasks": completed,
    }


def _old_time(value, key, field) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"session {key!r} has no {field}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"session {key!r} has an invalid {field} {value!r}") from None
    # The old service wrote naive local times; the seed's examples are UTC, so read them as UTC.
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


# -- users ---------------------------------------------------------------------------------------

PASSWORD_STDIN = click.option("--password-stdin", is_flag=True,
                              help="Read the password for the pages from the first line of standard input.")


def _users():
    return current_app.extensions["report_users"]


@contextmanager
def _refusals():
    """An account operation's refusal (no such user, a bad name...) as click's one-line error and exit 1."""
    try:
        yield
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None


def _read_password(from_stdin: bool, optional: bool) -> str | None:
    """The password from stdin, or asked for on a terminal; never a prompt without one."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        if optional:
            return None
        raise click.ClickException("No terminal to ask for the password on: pass it with --password-stdin.")
    hint = " (empty: API token only)" if optional else ""
    password = click.prompt(f"Password for the pages, {MIN_PASSWORD}+ characters{hint}", hide_input=True,
                            confirmation_prompt=True, default="" if optional else None, show_default=False)
    return password or None


@users_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see and manage every user's sessions.")
@PASSWORD_STDIN
def create_user(name, admin, password_stdin):
    """Create a user and print their API token (shown this once; only its hash is kept)."""
    password = _read_password(password_stdin, optional=True)
    with _refusals():
        token = _users().create(name, is_admin=admin, password=password)
    kind = "admin" if admin else "user"
    sign_in = "may sign in to the pages" if password else "has no password for the pages (`flask users password`)"
    click.echo(f"Created {kind} '{name}', who {sign_in}. The API token, shown only now:")
    click.echo(f"token: {token}")


@users_cli.command("list")
def list_users():
    """List the users: role, API token, password, and whether they are revoked."""
    accounts = _users().all()
    for a in accounts:
        state = f"revoked {a.revoked_at:%Y-%m-%d %H:%M}" if a.revoked_at else "active"
        click.echo(f"{a.name:<24}  {'admin' if a.is_admin else 'user':<5}  {state:<24}  "
                   f"token {'yes' if a.has_token else 'no':<3}  password {'yes' if a.has_password else 'no':<3}  "
                   f"created {a.created_at:%Y-%m-%d %H:%M}")
    click.echo(f"{len(accounts)} user{'s' if len(accounts) != 1 else ''}.")


@users_cli.command("revoke")
@click.argument("name")
def revoke_user(name):
    """Revoke a user at once: their token stops working and their page sign-ins end, in every server.

    Their sessions are kept (an admin still sees them); `flask users token NAME` lets them back in.
    """
    with _refusals():
        _users().revoke(name)
    click.echo(f"Revoked '{name}': their token and sign-ins no longer work.")


@users_cli.command("token")
@click.argument("name")
def new_token(name):
    """Issue a new API token (the old one stops working); this also lifts a revocation."""
    with _refusals():
        token = _users().issue_token(name)
    click.echo(f"New API token for '{name}', shown only now (the old one no longer works):")
    click.echo(f"token: {token}")


@users_cli.command("password")
@click.argument("name")
@PASSWORD_STDIN
def set_password(name, password_stdin):
    """Set a user's password for the pages; their current page sign-ins end."""
    password = _read_password(password_stdin, optional=False)
    with _refusals():
        _users().set_password(name, password or "")
    click.echo(f"Password set for '{name}'.")
