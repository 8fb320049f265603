"""The offline stack as real processes: emulated CMS, emulated connect and the connector, on loopback,
plus any number of standalone sync workers (`python -m bluebutton worker`) beside the connector.

Used by the one-command demo, the end-to-end tests and the benchmark, so all three run the same
wiring: HTTPS everywhere with the `local-certs` CA trusted, and nothing listening beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[3]
CERTS = ROOT / "local-certs"
CA_FILE = CERTS / "ca.pem"
CLIENT_ID = "bluebutton-sandbox-client"
CLIENT_SECRET = "bluebutton-sandbox-secret"  # noqa: S105 - the emulator's documented demo secret
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PortBusy(RuntimeError):
    """A port the stack was told to use is taken: a child would fail to listen, while whatever
    holds the port answered our readiness check in its place."""


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Raise `PortBusy` naming the first of `ports` ({what: port}, 0 = any) that cannot be bound."""
    for what, port in ports.items():
        if not port:
            continue
        with socket.socket() as sock:
            # The servers set SO_REUSEADDR too: a port left in TIME_WAIT is free, a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError as e:
                raise PortBusy(f"port {port} ({what}) is already in use on {HOST}: {e.strerror}") from e


def ca_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(CA_FILE))


@dataclass
class StackConfig:
    cms_port: int = 0
    connect_port: int = 0
    connect_control_port: int = 0  # connect's `/_sandbox/...`, open while its `down` fault is on
    connector_port: int = 0
    connect_db: Path | None = None
    cms_args: list[str] = field(default_factory=list)
    connect_args: list[str] = field(default_factory=list)
    connector_env: dict[str, str] = field(default_factory=dict)
    workers: int = 0  # standalone sync workers, started once the connector answers, with its environment
    log_dir: Path | None = None  # None: children write to our stdout/stderr
    quiet: bool = False  # servers and the connector's libraries log at WARNING (tools/quiet.py)
    ready_seconds: float = 120.0  # a first start of the embedded PostgreSQL runs initdb


@dataclass
class Stack:
    """Running processes and the URLs to reach them."""

    cms_url: str
    connect_url: str
    connector_url: str
    connect_control_url: str
    connect_db: Path
    log_dir: Path | None
    quiet: bool = False
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def launch(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.commands[name] = (args, env)
        self.processes[name] = _spawn(name, args, env, self.log_dir)

    def ready_url(self, name: str) -> str:
        return {
            "cms": f"{self.cms_url}/v2/fhir/metadata",
            "connect": f"{self.connect_url}/status",
            "connector": f"{self.connector_url}/health",
        }[name]

    def start_worker(self, name: str) -> None:
        """A standalone sync worker with the connector's settings (database, keys, CMS, connect)."""
        self.launch(name, [*self.product(), "worker"], self.commands["connector"][1])

    def product(self) -> list[str]:
        """The interpreter's arguments that run `python -m bluebutton`, quietly if asked."""
        return ["-m", "bluebutton.sandbox.tools.quiet", "bluebutton"] if self.quiet else ["-m", "bluebutton"]

    def restart(self, name: str) -> None:
        """Stop one process and start it again with the same command (e.g. to prove persistence)."""
        _stop(self.processes[name])
        self.launch(name, *self.commands[name])
        wait_ready(self.ready_url(name), self.processes[name])

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            _stop(process)


def connector_env(cms_url: str, connect_url: str, connector_url: str) -> dict[str, str]:
    port = connector_url.rsplit(":", 1)[1]
    return {
        "BLUEBUTTON_CMS_BASE_URL": cms_url,
        "BLUEBUTTON_LFH_URL": connect_url,
        "BLUEBUTTON_CA_FILE": str(CA_FILE),
        "BLUEBUTTON_CMS_CLIENT_ID": CLIENT_ID,
        "BLUEBUTTON_CMS_CLIENT_SECRET": CLIENT_SECRET,
        "BLUEBUTTON_CALLBACK_URL": f"https://localhost:{port}/bluebutton/authorize_callback",
        "BLUEBUTTON_HOST": HOST,
        "BLUEBUTTON_PORT": port,
        "BLUEBUTTON_TLS": "true",
    }


def _base_env() -> dict[str, str]:
    """Our environment without BLUEBUTTON_* settings, so only what we pass configures children."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEBUTTON_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    context = ca_context()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, verify=context, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


def database_conninfo(env: Mapping[str, str]) -> str:
    """libpq's connection string for the connector's database (the embedded server's socket is in
    its data directory, user and database `postgres`, as pgserver sets them up)."""
    url = env["BLUEBUTTON_DATABASE_URL"]
    if url != "embedded":
        return url
    return f"host={env['BLUEBUTTON_EMBEDDED_DATABASE_DIR']} user=postgres dbname=postgres"


def _last_worker_id(database: psycopg.Connection[tuple[int]]) -> int:
    row = database.execute("SELECT coalesce(max(id), 0) FROM procrastinate_workers").fetchone()
    return int(row[0]) if row else 0


def wait_workers_registered(
    database: psycopg.Connection[tuple[int]],
    known: int,
    workers: list[subprocess.Popen[bytes]],
    timeout: float,
) -> None:
    """Until each worker started after row `known` has registered with procrastinate. It then
    takes jobs, and a SIGTERM stops it gracefully: its signal handlers are set right after the
    registration, while one stopped earlier dies at once (see `_end_group`)."""
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM procrastinate_workers WHERE id > %s"
    while True:
        row = database.execute(query, (known,)).fetchone()
        if row is not None and row[0] >= len(workers):
            return
        for process in workers:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode} before it took jobs")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sync workers did not start within {timeout:g} s")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _end_group(process.pid)


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _end_group(group: int, grace: float = 5.0) -> None:
    """End what a stopped child left in its process group. A connector or worker stopped while
    starting (before its signal handlers) dies at once and leaves its validation pool behind: the
    forkserver, its workers and multiprocessing's resource tracker, orphans that keep our output
    pipe open. SIGTERM ends the pool's processes quietly, after which the tracker sees its pipe
    close, cleans up and exits; whatever is still there after `grace` seconds is killed."""
    if not group_members(group):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(group):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            return
        time.sleep(0.05)


def _spawn(
    name: str, args: list[str], env: Mapping[str, str], log_dir: Path | None
) -> subprocess.Popen[bytes]:
    """A child in a process group of its own: a terminal's Ctrl-C (SIGINT to the foreground group)
    reaches only us, and `Stack.stop` ends each child in order with SIGTERM. Were the children in our
    group, each would see the SIGINT at once: KeyboardInterrupt tracebacks in their process pools,
    the emulators torn down mid-request, and a child gone before we noticed the Ctrl-C."""
    if log_dir is None:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(env), process_group=0)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )


def configured_ports(config: StackConfig) -> dict[str, int]:
    """The ports the stack was told to use, by what listens there (0 = any free one)."""
    return {
        "the connector": config.connector_port,
        "the emulated CMS": config.cms_port,
        "the emulated connect": config.connect_port,
        "the emulated connect's controls": config.connect_control_port,
    }


def start_stack(config: StackConfig) -> Stack:
    """Start the three processes and wait until each answers; `PortBusy` before starting any
    when a configured port is taken."""
    check_ports_free(configured_ports(config))
    cms_port = config.cms_port or free_port()
    connect_port = config.connect_port or free_port()
    control_port = config.connect_control_port or free_port()
    connector_port = config.connector_port or free_port()
    cms_url = f"https://localhost:{cms_port}"
    connect_url = f"https://localhost:{connect_port}"
    connector_url = f"https://localhost:{connector_port}"
    db = config.connect_db or (config.log_dir or ROOT) / "connect-sandbox.sqlite3"
    env = _base_env()
    quiet_server = ["--log-level", "warning"] if config.quiet else []
    callback = f"https://localhost:{connector_port}/bluebutton/authorize_callback"
    control_url = f"https://localhost:{control_port}"
    stack = Stack(cms_url, connect_url, connector_url, control_url, db, config.log_dir, config.quiet)
    try:
        stack.launch(
            "cms",
            [
                "-m",
                "bluebutton.sandbox.cms",
                "--host",
                HOST,
                "--port",
                str(cms_port),
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                CLIENT_SECRET,
                "--redirect-uri",
                callback,
                *quiet_server,
                *config.cms_args,
            ],
            env,
        )
        stack.launch(
            "connect",
            [
                "-m",
                "bluebutton.sandbox.connect",
                "--host",
                HOST,
                "--port",
                str(connect_port),
                "--control-port",
                str(control_port),
                "--db",
                str(db),
                *quiet_server,
                *config.connect_args,
            ],
            env,
        )
        connector = {**env, **connector_env(cms_url, connect_url, connector_url), **config.connector_env}
        stack.launch("connector", stack.product(), connector)
        for name, process in stack.processes.items():
            wait_ready(stack.ready_url(name), process, config.ready_seconds)
        # After the connector: it applied the migrations, and an embedded server is up to share.
        if config.workers:
            try:
                with psycopg.connect(database_conninfo(connector), autocommit=True) as database:
                    known = _last_worker_id(database)
                    for number in range(1, config.workers + 1):
                        stack.start_worker(f"worker-{number}")
                    workers = [stack.processes[f"worker-{n}"] for n in range(1, config.workers + 1)]
                    wait_workers_registered(database, known, workers, config.ready_seconds)
            except psycopg.Error as e:
                raise RuntimeError(f"cannot watch the sync workers start in the database: {e}") from e
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def running_stack(config: StackConfig) -> Iterator[Stack]:
    stack = start_stack(config)
    try:
        yield stack
    finally:
        stack.stop()
