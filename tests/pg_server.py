"""A real PostgreSQL server for the tests, from the Debian packages (``postgresql``).

The ``postgres`` fixture runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``
in a fresh temporary directory, listening on 127.0.0.1 at a free port with trust
authentication, and stops it after the session. PostgreSQL refuses to run as root, so when
the tests run as root (as in CI) the server runs as the ``postgres`` system user (created by
the Debian package) or ``nobody``, and the directory is handed to that user. Tests get one
new database each from :meth:`PostgresServer.new_database`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "ebnn"


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb and pg_ctl."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()]
    found.sort(key=lambda d: [int(p) for p in d.parent.name.split(".") if p.isdigit()])
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server in ``base`` (data, socket and log), run as ``user`` when we are root."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir, self.base = bindir, base
        self.data, self.log = base / "data", base / "server.log"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._ids: tuple[int, int] | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._ids = (pw.pw_uid, pw.pw_gid)
                break
            else:
                raise RuntimeError("running as root and no unprivileged user (postgres, "
                                   "nobody) to run PostgreSQL as")
            os.chown(base, *self._ids)
        self._databases = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._ids is not None:
            kwargs = {"user": self._ids[0], "group": self._ids[1], "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               "HOME": str(self.base)}
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], env=env, cwd=self.base,
                              capture_output=True, text=True, timeout=120, **kwargs)
        if done.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip()}\n{log[-2000:]}")
        return done

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.base} -c listen_addresses={self.host} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy/Optuna URL of ``database`` on this server."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        self._databases += 1
        name = f"ebnn_test_{self._databases}"
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server (skipped when the Debian packages are not installed)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin "
                    "(Debian package postgresql)")
    base = Path(tempfile.mkdtemp(prefix="ebnn-pg-"))
    server = PostgresServer(bindir, base)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
