"""Database engine set-up: which SQLite library, the pragmas, write transactions, and what differs by database.

SQLite is reached through pysqlite3, which bundles a SQLite carrying the fix for the
"WAL-reset" bug (3.7.0 to 3.51.2: concurrent connections could corrupt a WAL database or lose
commits). Debian's libsqlite3, which Python's own sqlite3 links here, still has that bug, so
falling back to it is logged loudly at start-up.
"""
import logging
import time
import warnings
from contextlib import contextmanager

from sqlalchemy import Float, Table, event, make_url, text
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

log = logging.getLogger(__name__)

# A write transaction asks for this execution option; on SQLite it becomes BEGIN IMMEDIATE.
WRITE = {"report_write": True}


def sqlite_dbapi():
    """The DB-API module for SQLite URLs: pysqlite3 when installed, else the stdlib (with a warning)."""
    try:
        from pysqlite3 import dbapi2
        return dbapi2
    except ImportError:  # pragma: no cover - only on platforms without a pysqlite3 wheel
        import sqlite3
        warnings.warn(f"pysqlite3 is not installed: using the system SQLite {sqlite3.sqlite_version}, "
                      "which may carry the WAL-reset bug (fixed in 3.51.3)", RuntimeWarning)
        return sqlite3


def has_wal_reset_fix(version: str) -> bool:
    v = tuple(int(x) for x in version.split(".")[:3])
    return v >= (3, 51, 3) or (3, 50, 7) <= v < (3, 51, 0) or (3, 44, 6) <= v < (3, 45, 0)


def engine_options(uri: str, busy_timeout_ms: int, held_connections: int = 0) -> dict:
    """Extra create_engine() options for a database URL.

    `held_connections`: how many the runner's threads keep while they run (Store.pinned_connection);
    the pool grows by that many, so requests still find SQLAlchemy's default five.
    """
    url = make_url(uri)
    pool = {"pool_size": 5 + held_connections}
    if url.get_backend_name() != "sqlite":
        # A database that is down or unreachable fails a request (or a readiness probe) in 5 s,
        # instead of hanging it for the kernel's TCP timeout; a connect_timeout in the URL wins.
        timeout = {} if "connect_timeout" in url.query else {"connect_args": {"connect_timeout": 5}}
        return {"pool_pre_ping": True, **pool, **timeout}
    options = {"module": sqlite_dbapi(), "connect_args": {"timeout": busy_timeout_ms / 1000}}
    if url.database not in (None, "", ":memory:"):  # an in-memory database has a pool of its own kind
        options |= pool
    return options


def configure_engine(engine: Engine, busy_timeout_ms: int) -> None:
    """Pragmas on every new SQLite connection, and transactions we begin ourselves."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's BEGIN (below) start transactions, not the driver's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # NORMAL in WAL mode: a commit is durable once the WAL is synced at checkpoint; power loss
        # (not a process crash) can roll back the last few commits, never corrupt the database.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        dbapi_connection.create_function("report_now", 0, time.time)  # database_now() on SQLite

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        # A write transaction takes the write lock up front: a deferred one that read first and
        # then tried to write would fail with SQLITE_BUSY instead of waiting its turn.
        immediate = conn.get_execution_options().get("report_write")
        # Straight to the driver: SQLAlchemy's execution layer would cost more than the BEGIN itself.
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def write_transaction(engine: Engine):
    """A connection inside one write transaction (BEGIN IMMEDIATE on SQLite), committed on exit."""
    with engine.connect() as conn:
        conn = conn.execution_options(**WRITE)
        with conn.begin():
            yield conn


class database_now(FunctionElement):
    """The database server's time in unix seconds: leases and turns are timed by one clock, whichever
    host reads or writes them (hosts' clocks drift apart; the database's is the one they share)."""

    type = Float()
    inherit_cache = True


@compiles(database_now, "postgresql")
def _now_postgresql(element, compiler, **kw):
    # clock_timestamp(), not now(): a claim that waited for a lock compares leases with the time it got it.
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(database_now, "sqlite")
def _now_sqlite(element, compiler, **kw):
    # A SQLite database is a file on this machine, so its clock is this machine's: report_now() is
    # time.time(), registered on every connection. SQLite's own 'now' has only millisecond
    # resolution, which ties the turns of claims made within one millisecond.
    return "report_now()"


# SQLSTATEs of errors that mean "this transaction lost a race; run it again": a serialization failure,
# a deadlock (PostgreSQL aborts one of the two transactions).
TRANSIENT_SQLSTATES = {"40001", "40P01"}


def is_transient(exc: BaseException) -> bool:
    """Whether an error rolled back a whole transaction that can safely run again from the start."""
    return getattr(getattr(exc, "orig", None) or exc, "sqlstate", None) in TRANSIENT_SQLSTATES


def upsert(table: Table, dialect: Dialect):
    """INSERT ... ON CONFLICT for the dialect (SQLite and PostgreSQL spell it alike)."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def insert_or_ignore(table: Table, dialect: Dialect):
    """INSERT that does nothing when the row's key exists (ON CONFLICT DO NOTHING: SQLite and PostgreSQL)."""
    return upsert(table, dialect).on_conflict_do_nothing()


def describe(engine: Engine) -> str:
    """One line for start-up logs: the database, and for SQLite its library and settings."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            return f"{engine.dialect.name} database {engine.url.render_as_string(hide_password=True)}"
        version = conn.execute(text("select sqlite_version()")).scalar()
        mode = conn.execute(text("pragma journal_mode")).scalar()
    fix = "has the WAL-reset fix" if has_wal_reset_fix(version) else "LACKS the WAL-reset fix (upgrade pysqlite3)"
    return (f"SQLite {version} via {engine.dialect.dbapi.__name__} ({fix}), journal_mode={mode}, "
            f"synchronous=NORMAL, database {engine.url.database}")


def render_migration_item(type_, obj, autogen_context):
    """Alembic autogenerate hook: write our UTCDateTime columns as the plain sa.DateTime() they store."""
    from app.models import UTCDateTime

    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False
