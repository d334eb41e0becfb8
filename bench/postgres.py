"""A throwaway PostgreSQL cluster for the benchmarks: initdb in a temporary folder, one fresh database per call.

Debian's PostgreSQL (/usr/lib/postgresql/<newest>/bin) is started on a free 127.0.0.1 port with
the durable defaults a production server has: fsync, synchronous_commit and full_page_writes on,
as initdb leaves them (only max_connections is raised, for 4 worker processes and DBOS). Every
side of a comparison uses the same cluster, so they make the same durability promise;
`describe()` prints the settings in force, read back from the server. As root, initdb and pg_ctl
run as the postgres user (runuser), in a folder it owns. One cluster serves the whole `make
bench` run (`cluster()`), and is stopped, its folder deleted, when the process exits.
"""
import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

USER = "bench"
MAX_CONNECTIONS = 300  # 4 workers x (4 threads + 6 + 10 overflow) for ours, DBOS's pools, the benchmark's own
# What describe() reads back and prints: durability first, then what shapes commit latency.
SHOWN = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "commit_delay",
         "wal_level", "shared_buffers", "max_connections")


def binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql): no /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


def _as_postgres(args, timeout=120) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self):
        self.bin = binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.running = False
        try:
            if os.geteuid() == 0:
                shutil.chown(self.folder, "postgres", "postgres")
            done = _as_postgres([self.bin / "initdb", "-D", self.data, "-U", USER, "--auth=trust", "-E", "UTF8",
                                 "--locale=C.UTF-8"])
            if done.returncode:
                raise RuntimeError(f"initdb failed:\n{(done.stdout + done.stderr)[-1500:]}")
            done = _as_postgres([self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o",
                                 f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                                 f"-c max_connections={MAX_CONNECTIONS}", "start"], timeout=90)
            if done.returncode:
                raise RuntimeError(f"PostgreSQL did not start:\n{(done.stdout + done.stderr)[-1500:]}\n"
                                   f"{self.log_tail()}")
            self.running = True
        except BaseException:
            self.stop()
            raise

    def url(self, database: str, driver: str = "psycopg") -> str:
        """SQLAlchemy's URL of a database (`driver` None: the plain postgresql:// form libpq takes)."""
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        return f"{scheme}://{USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", autocommit: bool = False):
        """A psycopg connection to a database of this cluster."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname=database, autocommit=autocommit)

    def fresh_database(self, prefix: str = "bench") -> str:
        """A new empty database; returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def settings(self) -> dict[str, str]:
        with self.connect(autocommit=True) as conn:
            return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SHOWN}

    def describe(self) -> str:
        found = self.settings()
        return (f"PostgreSQL {found.pop('server_version').split()[0]} on 127.0.0.1 (TCP), "
                + ", ".join(f"{k}={v}" for k, v in found.items()))

    def activity(self) -> tuple[int, int]:
        """(transaction ids handed out, bytes of WAL written) so far, cluster-wide: the difference over a
        stretch of time when only one side works counts its write transactions and its WAL."""
        with self.connect(autocommit=True) as conn:
            xids, wal = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
                                     "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
        return int(xids), int(wal)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast: sessions are disconnected) and delete its folder."""
        if self.running:
            _as_postgres([self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"], timeout=60)
            self.running = False
        shutil.rmtree(self.folder, ignore_errors=True)


_cluster = None


def cluster() -> Cluster:
    """The run's cluster, started on first use and stopped when the process exits."""
    global _cluster
    if _cluster is None:
        _cluster = Cluster()
        atexit.register(_cluster.stop)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # Killed, still unwind: the benchmarks' `finally` blocks stop their processes, atexit the cluster.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        print(f"   .. {_cluster.describe()}", flush=True)
    return _cluster
