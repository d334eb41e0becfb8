"""A throwaway PostgreSQL cluster for the test suite (TEST_DATABASE=postgresql).

Debian's PostgreSQL (`make postgres` installs it) is initialised into a temporary folder (in memory,
on /dev/shm, when there is room), listens on 127.0.0.1 on a free port with its unix socket in that
folder, and is tuned for speed, not durability: a test database never has to survive a power cut.
`stop()` shuts it down as a crash would (immediate mode) and removes the folder; the next start
does the same for clusters whose test run was killed before it could. Run as root, the server runs
as the `postgres` user, which owns the folder. Databases are made and dropped over one autocommit
connection.
"""
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import psycopg

INITDB = "/usr/lib/postgresql/*/bin/initdb"
SUPERUSER = "tests"

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "300",  # the tests' apps and gunicorn workers each keep a pool
    # Nothing here has to survive a power cut: skip every flush to disk.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # A database lives for one test. An autovacuum worker in the template would only make the next
    # CREATE DATABASE wait for it to leave.
    "autovacuum": "off",
}


def bin_dir() -> Optional[Path]:
    """The newest installed PostgreSQL's bin folder, or None when there is none."""
    found = glob.glob(INITDB)
    if not found:
        return None
    newest = max(found, key=lambda path: [int(n) for n in re.findall(r"\d+", path)])
    return Path(newest).parent


def version() -> Optional[str]:
    """"PostgreSQL 15.18" (of the binaries a cluster would use), or None when none is installed."""
    folder = bin_dir()
    if folder is None:
        return None
    out = subprocess.run([str(folder / "postgres"), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"\d+(\.\d+)*", out)
    return f"PostgreSQL {found.group(0)}" if found else "PostgreSQL"


# Each test's CREATE DATABASE writes some 300 files: several times faster on a memory file system
# than on this disk. Docker gives /dev/shm only 64 MB by default, so it must have room to spare.
MEMORY_FOLDER = "/dev/shm"
MEMORY_NEEDED = 2 * 2**30


def _scratch_parent() -> Optional[str]:
    """Where the cluster's folder goes: /dev/shm when it has room, else the temporary folder (None)."""
    try:
        if shutil.disk_usage(MEMORY_FOLDER).free >= MEMORY_NEEDED:
            return MEMORY_FOLDER
    except OSError:
        pass
    return None


PREFIX = "tests-postgres-"
OWNER = "owner.pid"  # in the cluster's folder: the pid of the test run that started it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server of its own, from start() to stop()."""

    def __init__(self, folder: Optional[Path] = None):
        """A cluster to start(), or the one already in `folder` (to stop() it)."""
        self.bin = bin_dir()
        if self.bin is None:
            raise RuntimeError(f"PostgreSQL is not installed (no {INITDB}): run `make postgres`, "
                               "or apt-get install postgresql")
        self.folder = folder
        self.port: Optional[int] = None
        self._admin: Optional[psycopg.Connection] = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one of PostgreSQL's programs as its owner (the `postgres` user when we are root)."""
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, cwd=self.folder, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def _check(self, *args: str, timeout: float = 120) -> None:
        result = self._run(*args, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(text.splitlines()[-lines:])

    def start(self) -> "Cluster":
        parent = _scratch_parent()
        self._reap_orphans(parent)
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        (self.folder / OWNER).write_text(str(os.getpid()))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        try:
            self._check("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                        "--locale=C", "--no-sync", "--no-instructions")
            settings = dict(SETTINGS, unix_socket_directories=f"'{self.folder}'")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write("\n# tests/postgres.py: a throwaway cluster\n")
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            self._listen()
            self._admin = psycopg.connect(self.dsn("postgres"), autocommit=True)
        except BaseException:
            self.stop()
            raise
        return self

    def _listen(self, tries: int = 3) -> None:
        """Start the server on a free port; another process may take the port first, so try a few."""
        for _ in range(tries):
            self.port = _free_port()
            result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", f"-p {self.port}",
                               "-w", "-t", "60", "start")
            if result.returncode == 0:
                return
            if "could not bind" not in self.log_tail():
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{result.stdout}{result.stderr}{self.log_tail()}")

    def _reap_orphans(self, parent: Optional[str]) -> None:
        """Stop and remove the clusters of test runs that were killed (a CI timeout, SIGKILL) before
        they could: on /dev/shm each would hold memory, and its server run, until the machine restarts."""
        for folder in glob.glob(os.path.join(parent or tempfile.gettempdir(), PREFIX + "*")):
            try:
                owner = int(Path(folder, OWNER).read_text())
            except (OSError, ValueError):
                continue  # not one of ours, or still being made
            if not _alive(owner):
                try:
                    Cluster(Path(folder)).stop()
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass  # its folder is gone all the same; this run's cluster matters more

    def stop(self) -> None:
        """Stop at once (immediate: no checkpoint, as a crash would) and remove the folder; idempotent."""
        if self.folder is None:
            return
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        try:
            if (self.data / "postmaster.pid").exists():  # not when start() failed, or a Ctrl-C stopped it
                self._check("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def dsn(self, name: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={name}"

    def url(self, name: str) -> str:
        """The SQLAlchemy URL of database `name` (psycopg 3)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str, template: Optional[str] = None) -> str:
        """An empty database, or a copy of `template` (which nothing may be connected to); returns its URL."""
        if template is None:
            self._admin.execute(f'CREATE DATABASE "{name}"')
        else:
            # FILE_COPY copies the template's files whole: with fsync off its checkpoints cost little,
            # and it measured some 15% faster here than PG15's default, WAL_LOG (every block logged).
            self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending whatever is still connected to it (a server a failed test left behind)."""
        self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
