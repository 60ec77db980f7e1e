"""A throwaway Postgres cluster for tests: initdb in a temp dir, `postgres` on a free loopback
port, removed at the end. Installs Debian's `postgresql` when no server binaries are found
(as root, with apt-get); tests skip with the reason only when that is impossible.

Postgres refuses to run as root, so as root the server runs as the `postgres` user (created
by the Debian package) from a directory that user owns. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

INSTALL_TIMEOUT = 600.0


class Unavailable(Exception):
    """Postgres cannot be run here (the message says why)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path | None:
    """Directory holding `initdb` and `postgres` (PATH first, then Debian's layout)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def ensure_installed() -> Path:
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable("Postgres is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "-q", "postgresql"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "postgresql"],
    ):
        try:
            subprocess.run(cmd, env=env, check=False, timeout=INSTALL_TIMEOUT, capture_output=True)
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"{' '.join(cmd)} took over {INSTALL_TIMEOUT}s") from exc
        bindir = find_bindir()
        if bindir is not None:
            return bindir
    raise Unavailable("apt-get install postgresql did not provide initdb")


class PostgresServer:
    """One private Postgres server. `url(db)` gives a DSN; `new_database()` a fresh database."""

    def __init__(self) -> None:
        self.bindir = ensure_installed()
        self.port = _free_port()
        self.user = "callroom"
        self.root = Path(tempfile.mkdtemp(prefix="callroom-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise Unavailable("running as root and there is no `postgres` user") from exc
            self._run_as = "postgres"
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)

    def _popen_kwargs(self) -> dict[str, object]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as, "group": self._run_as, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> PostgresServer:
        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            timeout=120,
            cwd=self.root,
            check=False,
            **self._popen_kwargs(),  # type: ignore[arg-type]
        )
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        log = open(self.log_path, "ab")
        if self._run_as is not None:
            import pwd

            pw = pwd.getpwnam(self._run_as)
            os.chown(self.log_path, pw.pw_uid, pw.pw_gid)
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **self._popen_kwargs(),  # type: ignore[arg-type]
        )
        log.close()
        deadline = time.monotonic() + timeout
        import psycopg

        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"postgres exited at start-up:\n{self.log()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise Unavailable(
                        f"postgres not ready after {timeout}s:\n{self.log()}"
                    ) from None
                time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
