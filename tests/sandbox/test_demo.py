"""The demo's command line, directly and through `./scripts/run`: flags reach it, `--help` helps, a
busy port is named before anything starts, the key files; and the demo itself, as real processes,
with grant keeping on its embedded PostgreSQL and a worker, driven by its banner's own commands."""

from __future__ import annotations

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
from bluebutton.sandbox.tools.demo import SecretFileError, kept_secret
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


class Demo:
    """`python -m bluebutton.sandbox.tools.demo` as a process; its output read as it comes."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bluebutton.sandbox.tools.demo", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("BLUEBUTTON_")},
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

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


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
        assert listed == {"grants": []}
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
