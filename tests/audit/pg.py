"""A throwaway PostgreSQL server for tests: its own cluster in a temporary directory, on loopback.

``initdb`` into a fresh temporary directory, trust authentication for local connections only
(the Unix socket, inside that directory, and 127.0.0.1), ``listen_addresses='127.0.0.1'`` on a
free port, fsync on; started with ``pg_ctl start -w`` and stopped with ``pg_ctl stop -m fast``
(or, should that fail, by signalling the postmaster's own pid), after which the directory is
removed. PostgreSQL refuses to run as root, so as root the binaries run as the ``postgres``
system user (``runuser -u postgres --``); as anyone else they run as that user.

    with PgServer() as pg:
        dsn = pg.create_database("t1")

Anything that prevents a server from starting raises `PgUnavailable` with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PgUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: ``pg_config --bindir``, else the
    newest /usr/lib/postgresql/*/bin, else wherever ``initdb`` is on PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all((bindir / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
        "install the Debian package 'postgresql' (scripts/bootstrap does, as root)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1. `start()` (or ``with``) brings it up;
    `stop()` shuts it down and removes its directory (also at interpreter exit)."""

    def __init__(self, *, bindir: Path | None = None, dbname: str = "cport_test") -> None:
        self._bindir = bindir
        self.dbname = dbname
        self.port = 0
        self.tmp: Path | None = None
        self._as_postgres = False
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PgServer:
        if self.tmp is not None:
            return self
        bindir = self._bindir or find_bindir()
        self._bindir = bindir
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable(
                    "running as root, and there is no 'postgres' system user to run the server "
                    "as (PostgreSQL refuses to run as root)"
                ) from None
            if shutil.which("runuser") is None:
                raise PgUnavailable("running as root, and 'runuser' (util-linux) is missing")
            self._as_postgres = True
        self.tmp = Path(tempfile.mkdtemp(prefix="cport-pg-"))
        atexit.register(self.stop)
        try:
            if owner is not None:
                os.chown(self.tmp, owner.pw_uid, owner.pw_gid)
            self._initdb()
            last = ""
            for _ in range(3):  # another process may take the free port before we bind it
                self.port = _free_port()
                self._configure()
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                              "-t", "60", "start")  # fmt: skip
                except PgUnavailable as exc:
                    last = str(exc)
                    if "could not bind" not in self.log_tail():
                        raise
                    continue
                self._started = True
                break
            else:
                raise PgUnavailable(f"could not bind a free port on 127.0.0.1: {last}")
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown; its postmaster is killed by pid if that fails) and
        remove its directory. Safe to call twice."""
        tmp, self.tmp = self.tmp, None
        if tmp is None:
            return
        atexit.unregister(self.stop)
        try:
            # Also after a failed or timed-out start: a postmaster may be up all the same.
            if self._started or (tmp / "data" / "postmaster.pid").exists():
                self._started = False
                try:
                    self._run("pg_ctl", "-D", str(tmp / "data"), "-m", "fast", "-w", "-t", "30",
                              "stop", tmp=tmp)  # fmt: skip
                except PgUnavailable:
                    self._kill_postmaster(tmp / "data")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        try:
            pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
            # Only our own postmaster: a stale pid file may name a reused pid.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(data).encode() not in cmdline:
            return
        for sig, wait in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    # -- connection strings ----------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """The DSN of the default database (created at start)."""
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        if self.tmp is None:
            raise PgUnavailable("the PostgreSQL test server is not running")
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, dbname: str) -> str:
        """Create database `dbname` (a plain lower-case name); returns its DSN."""
        if not _NAME.fullmatch(dbname):
            raise ValueError(f"not a plain database name: {dbname!r}")
        try:
            with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {dbname}")
        except psycopg.Error as exc:
            raise PgUnavailable(f"cannot create database {dbname}: {exc}") from exc
        return self.dsn_for(dbname)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "data"

    @property
    def log(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip

    def _configure(self) -> None:
        assert self.tmp is not None
        (self.data / "pg_hba.conf").write_text(
            "# cport test cluster: trust, local connections only\n"
            "local all all trust\n"
            "host  all all 127.0.0.1/32 trust\n"
        )
        conf = self.data / "postgresql.conf"
        text = conf.read_text().split("\n# cport test settings\n", 1)[0]
        conf.write_text(
            text + "\n# cport test settings\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.tmp}'\n"
            "fsync = on\n"
            "synchronous_commit = on\n"
            "max_connections = 50\n"
            "shared_buffers = 32MB\n"
        )

    def _run(self, binary: str, *args: str, tmp: Path | None = None) -> None:
        assert self._bindir is not None
        cwd = tmp or self.tmp
        cmd = [str(self._bindir / binary), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PgUnavailable(f"{binary} could not run: {exc}") from exc
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
            log = self.log_tail() if tmp is None else ""
            raise PgUnavailable(
                f"{binary} {' '.join(args)} failed (exit {proc.returncode}): {detail}"
                + (f"\nserver log:\n{log}" if log else "")
            )
