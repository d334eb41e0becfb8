"""Start-up checks that stop a server with one clear line instead of a traceback."""
import logging

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from app.database import describe
from app.extensions import db, migrate

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """Configuration or database state that the service cannot start with."""


def check_ready(app: Flask) -> str:
    """Fail unless the database is reachable and migrated to the newest revision; returns a summary line."""
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=True)
        heads = set(ScriptDirectory.from_config(migrate.get_config()).get_heads())
        try:
            with db.engine.connect() as conn:
                current = set(MigrationContext.configure(conn).get_current_heads())
            summary = describe(db.engine)
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot open the database {url}: {getattr(exc, 'orig', None) or exc}") from None
    if current != heads:
        state = "is not migrated" if not current else f"is at revision {sorted(current)}, not {sorted(heads)}"
        raise ConfigError(f"the database {url} {state}: run `flask --app wsgi db upgrade` (make run does this)")
    log.info(summary)
    return summary
