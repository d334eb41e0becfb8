"""Wake-ups across processes: on PostgreSQL an idle runner LISTENs for the NOTIFY a submit makes.

The store NOTIFYs its channel in the transaction that makes work (a submit, a retry, a lease handed
back), so PostgreSQL delivers it at commit to every listening runner, on any machine, and the
first to claim takes the session: a new session starts as soon as some runner is free, instead of
at its next poll. The poll stays, for what no one announces (a lease that simply ran out).
On SQLite every runner shares the machine; the web process wakes its own runner, and the others
poll every REPORTS_POLL_SECONDS.
"""
import logging
import threading
from typing import Callable

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

RECONNECT_SECONDS = (0.5, 1, 2, 5)  # waits between attempts while the database is unreachable


class WorkListener:
    """A thread holding one connection of its own (outside the pool) that calls `wake` on each notification."""

    def __init__(self, engine: Engine, channel: str, wake: Callable[[], None], stopping: threading.Event):
        self.engine, self.channel, self.wake, self.stopping = engine, channel, wake, stopping
        self._thread = threading.Thread(target=self._run, name="report-runner-listener", daemon=True)

    def start(self) -> "WorkListener":
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _connect(self):
        # The arguments SQLAlchemy itself would connect with (host, user, password, sslmode...).
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        conn = self.engine.dialect.loaded_dbapi.connect(*args, **kwargs)
        conn.autocommit = True  # LISTEN takes effect at once, and notifications arrive between transactions
        conn.execute(f"LISTEN {self.channel}")
        return conn

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                conn = self._connect()
            except Exception as exc:
                wait = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("runner wake-ups: cannot LISTEN (%s); polling only, trying again in %ss", exc, wait)
                self.stopping.wait(wait)
                continue
            if failures:
                log.info("runner wake-ups: listening again")
                self.wake()  # anything announced while we were away
            failures = 0
            try:
                while not self.stopping.is_set():
                    # Returns after a second without news, so a stop is noticed within one.
                    for _notify in conn.notifies(timeout=1.0):
                        self.wake()
            except Exception as exc:
                if not self.stopping.is_set():
                    log.warning("runner wake-ups: the listening connection failed (%s); reconnecting", exc)
                    failures = 1
            finally:
                try:
                    conn.close()
                except Exception:
                    pass
