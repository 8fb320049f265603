"""A PostgreSQL cluster of the test's own, to stop, kill and start again: `initdb` and `postgres`
run as the `postgres` user (they refuse root) on a free loopback port, in their own process group
so a SIGKILL takes every backend with the postmaster. Never the shared server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bluebutton.sandbox.tools.stack import free_port

READY_SECONDS = 60.0


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def available() -> str | None:
    """None when initdb and postgres can run here, else why not (a skip reason)."""
    for tool in ("initdb", "postgres"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


class OwnPostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bluebutton-own-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        subprocess.run(
            _as_postgres(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        args = [
            "postgres",
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]
        with (self.root / "server.log").open("ab") as log:  # the server keeps its own descriptor
            self.process = subprocess.Popen(
                _as_postgres(args), stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                if self.process.poll() is not None:
                    tail = (self.root / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"postgres exited: {tail}") from e
                time.sleep(0.1)
        raise RuntimeError("postgres did not become ready")

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions are cut, like an operator's restart)."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the postmaster and every backend at once."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=60)
        self.process = None
        if sig == signal.SIGKILL:  # what a crashed server leaves; the next start recovers its WAL
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            for lock in self.root.glob(".s.PGSQL.*"):
                lock.unlink(missing_ok=True)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
