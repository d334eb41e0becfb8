"""Start-up: checks that stop a server with one clear line instead of a traceback, and the secret key."""
import ipaddress
import logging
import os
import secrets

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from app.database import describe
from app.extensions import db, migrate

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """Configuration or database state that the service cannot start with."""


def check_ready(app: Flask) -> str:
    """Fail unless the database is reachable and migrated to the newest revision; returns a summary line."""
    heads = migration_heads(app)
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=True)
        try:
            with db.engine.connect() as conn:
                current = current_revisions(conn)
            summary = describe(db.engine)
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot open the database {url}: {getattr(exc, 'orig', None) or exc}") from None
    if current != heads:
        state = "is not migrated" if not current else f"is at revision {sorted(current)}, not {sorted(heads)}"
        raise ConfigError(f"the database {url} {state}: run `flask --app wsgi db upgrade` (make run does this)")
    log.info(summary)
    return summary


def current_revisions(conn: Connection) -> set[str]:
    """The revision(s) the database is at (none: not migrated), as Alembic records them."""
    return set(MigrationContext.configure(conn).get_current_heads())


def migration_heads(app: Flask) -> set[str]:
    """The newest revision(s) in migrations/: where a database the service may use must be."""
    with app.app_context():
        return set(ScriptDirectory.from_config(migrate.get_config()).get_heads())


def instance_secret_key(instance_path: str) -> str:
    """The key kept in instance/secret_key, made (readable by its owner only) by the first process to start.

    Made with a hard link from a finished temporary file, so processes starting together (gunicorn's
    master, the CLI) all read the same complete key.
    """
    path = os.path.join(instance_path, "secret_key")
    if not os.path.exists(path):
        os.makedirs(instance_path, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(temporary)
    with open(path) as f:
        return f.read().strip()


def is_loopback(address: str) -> bool:
    """Whether a bind address ("host:port", "[::1]:8000", "unix:/path", "localhost") is reachable only locally."""
    if address.startswith(("unix:", "fd://")):
        return True
    if address.startswith("["):  # "[::1]:8000", or "[::1]" (gunicorn's default port)
        host = address[1:].partition("]")[0]
    else:
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_not_open(app: Flask, addresses: list[str]) -> None:
    """Refuse to serve the open service (no users yet) beyond loopback unless REPORTS_ALLOW_OPEN_ACCESS says so."""
    exposed = [a for a in addresses if not is_loopback(a)]
    if not exposed or app.config["ALLOW_OPEN_ACCESS"] or app.extensions["report_users"].exist():
        return
    raise ConfigError(f"no users exist, so anyone who reaches {', '.join(exposed)} could read and delete every "
                      "report: create one with `flask --app wsgi users create NAME --admin`, or set "
                      "REPORTS_ALLOW_OPEN_ACCESS=true to serve it open")
