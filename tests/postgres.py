"""A private PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` on a free loopback port.

- :class:`PostgresCluster` makes a cluster in a temporary directory (data and socket
  directory both in it), starts it on ``127.0.0.1:port`` with durability off for speed
  (``fsync``, ``synchronous_commit``, ``full_page_writes``), and removes it on stop.
- PostgreSQL refuses to run as root: when the tests run as root (CI here does), initdb
  and the server run as ``nobody`` (uid 65534 on Debian, always there), and the temporary
  directory is theirs; as a normal user they run as that user.
- Fixtures: ``postgres`` (session-scoped) is the DSN of the cluster's ``postgres``
  database, a superuser ``postgres`` with trust authentication on loopback; ``pg_dsn``
  (function-scoped) is the DSN of a fresh database of its own for each test, created
  from ``template1`` and dropped after.

The binaries are looked for in ``/usr/lib/postgresql/*/bin`` (Debian's postgresql-15,
newest first) and then on PATH. A missing PostgreSQL fails the test, never skips it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from firmware_sim.mosquitto import free_port

__all__ = ["PostgresCluster", "find_pg_bin", "pg_dsn", "postgres"]

#: Who runs the server when the tests run as root (Debian always has it).
RUN_AS_WHEN_ROOT = "nobody"

_SERVER_OPTIONS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "60",
    "shared_buffers": "64MB",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
    "TimeZone": "UTC",
}


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``; None when not installed."""

    def version(path: str) -> tuple[int, ...]:
        number = Path(path).parent.name
        return tuple(int(p) for p in number.split(".") if p.isdigit())

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(os.path.realpath(initdb)).parent
    return None


class PostgresCluster:
    """One PostgreSQL server of its own; :meth:`start` then :meth:`stop` (or ``with``)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="proximity-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = RUN_AS_WHEN_ROOT
            shutil.chown(self.root, user=RUN_AS_WHEN_ROOT, group=_group_of(RUN_AS_WHEN_ROOT))
        self.sockets.mkdir()
        if self._user is not None:
            shutil.chown(self.sockets, user=self._user, group=_group_of(self._user))

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        as_root = self._user is not None
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            check=False,
            timeout=60,
            user=self._user,
            group=_group_of(self._user) if self._user is not None else None,
            extra_groups=[] if as_root else None,
        )

    def start(self) -> None:
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr or done.stdout}")
        failure = ""
        for _ in range(5):  # another process may take the free port between pick and bind
            self.port = free_port()
            options = {
                **_SERVER_OPTIONS,
                "port": str(self.port),
                "unix_socket_directories": str(self.sockets),
            }
            flags = " ".join(f"-c {k}={v}" for k, v in options.items())
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", flags, "-w", "start"
            )
            if done.returncode == 0:
                return
            failure = self.log.read_text(errors="replace") if self.log.exists() else done.stderr
        raise RuntimeError(f"postgres did not start: {failure[-2000:]}")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_of(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A private PostgreSQL cluster for the session; the DSN of its ``postgres`` database."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed (looked in /usr/lib/postgresql/*/bin and on PATH): "
            "run `make test`, which installs postgresql-15",
            pytrace=False,
        )
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


_numbers = itertools.count(1)


@pytest.fixture
def pg_dsn(postgres: str) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test alone (dropped after)."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    try:
        yield postgres.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
