#!/usr/bin/env python3
"""A throwaway PostgreSQL server on 127.0.0.1, for aicortex's tests and benchmarks.

Standard library only. It runs the ``initdb`` and ``postgres`` programs of an installed
PostgreSQL (Debian/Ubuntu: ``apt-get install postgresql``, found under
``/usr/lib/postgresql/*/bin``; elsewhere on ``PATH`` or ``pg_config --bindir``; or
``AICORTEX_PG_BIN``). Module use::

    from pgserver import PgServer, PgUnavailable
    with PgServer() as pg:                # initdb into a temp dir, start, wait until ready
        url = pg.create_database("t1")    # "postgresql://aicortex@127.0.0.1:PORT/t1"
        pg.stop(); pg.start()             # an outage, then the same server again

Command line: ``python scripts/pgserver.py`` starts one and prints its URL until Ctrl-C.

The server listens on 127.0.0.1 on a free port (TCP, password login: the password is
put in ``PGPASSWORD`` by :meth:`PgServer.export_password`, never in the URL) and on a
Unix socket in its own temp dir (trust, for administration). ``postgres`` refuses to run
as root: as root, the data dir is given to the ``postgres`` user (which Debian's package
creates) and the programs run as that user. Durability is off (``fsync=off``): the data
is thrown away. The server is stopped by its PID.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["PgServer", "PgUnavailable", "find_bindir"]

USER = "aicortex"


class PgUnavailable(RuntimeError):
    """PostgreSQL's server programs are not installed (or cannot be run here)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``; ``PgUnavailable`` if none.
    ``AICORTEX_PG_BIN``, when set, is the only place looked at."""
    env = os.environ.get("AICORTEX_PG_BIN")
    if env:
        if (Path(env) / "initdb").is_file() and (Path(env) / "postgres").is_file():
            return Path(env)
        raise PgUnavailable(f"no initdb/postgres in AICORTEX_PG_BIN={env}")
    candidates: list[str] = []
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise PgUnavailable(
        "PostgreSQL's initdb/postgres not found (install it: apt-get install -y postgresql, "
        "or set AICORTEX_PG_BIN to its bin directory)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temp dir (see the module docstring).

    Attributes:
        port: its TCP port on 127.0.0.1.
        password: the login password of ``USER`` over TCP.
        pid: the postmaster's PID while it runs, else ``None``.
    """

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="aicortex-pg-"))
        self.data = self.dir / "data"
        self._as: dict[str, object] = {}
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PgUnavailable("running as root and there is no 'postgres' user to run the server as") from exc
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            os.chown(pwfile, int(self._as["user"]), int(self._as["group"]))  # type: ignore[call-overload]
        out = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=self.dir, **self._as,  # type: ignore[arg-type]
        )
        pwfile.unlink()
        if out.returncode != 0:
            raise PgUnavailable(f"initdb failed: {out.stderr.strip() or out.stdout.strip()}")

    @property
    def admin_url(self) -> str:
        """A URL to the ``postgres`` database over TCP (needs :meth:`export_password`)."""
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        """``postgresql://aicortex@127.0.0.1:PORT/dbname`` (no password in it)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def export_password(self) -> None:
        """Put the password in ``PGPASSWORD`` (libpq reads it from there)."""
        os.environ["PGPASSWORD"] = self.password

    def start(self, timeout: float = 30.0) -> "PgServer":
        """Start the server (again, after :meth:`stop`) and wait until it accepts logins."""
        cmd = [
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=300", "-c", "shared_buffers=32MB", "-c", "log_min_messages=fatal",
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir, **self._as)  # type: ignore[call-overload]
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self.pid = None
                raise PgUnavailable(f"postgres exited at start: {err.strip()}")
            if (self.dir / f".s.PGSQL.{self.port}").exists() and self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise PgUnavailable(f"postgres did not start within {timeout} s")

    def _ready(self) -> bool:
        isready = self.bindir / "pg_isready"
        if not isready.exists():
            return True
        return subprocess.run([str(isready), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0

    def psql(self, sql: str, dbname: str = "postgres") -> None:
        """Run SQL as the superuser over the Unix socket (trust)."""
        psql = shutil.which("psql") or str(self.bindir / "psql")
        out = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir), "-p", str(self.port), "-U", USER, "-d", dbname, "-c", sql],
            capture_output=True, text=True, **self._as,  # type: ignore[arg-type]
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, closing connections still open to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server by its PID (fast shutdown: SIGINT), waiting until it is gone."""
        proc, self._proc, self.pid = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        """Stop and delete the data dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


if __name__ == "__main__":
    with PgServer() as pg:
        print(f"{pg.admin_url}  (PGPASSWORD={pg.password})", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            sys.exit(0)
