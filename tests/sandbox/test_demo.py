"""The demo's command line, directly and through `./scripts/run`: flags reach it, `--help` helps, and
a busy port is named before anything starts."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bluebutton.sandbox.cms.data import user_for_patient_id
from bluebutton.sandbox.stack import HOST, PortBusy, check_ports_free, free_port

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
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.demo", *args],
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
    assert done.stdout.startswith(f"usage: python -m bluebutton.sandbox.{module}")
    assert option in done.stdout


def test_run_script_passes_flags_to_the_demo(taken_port: int) -> None:
    # The demo refusing the busy port it was given proves the flag arrived, without starting it.
    done = run_script("--port", str(taken_port), "--cms-port", str(free_port()))
    assert done.returncode == 1, done.stderr
    assert f"demo: port {taken_port} (the connector) is already in use" in done.stderr
    assert "not found" not in done.stderr


def test_readme_examples_use_patient_ids_of_the_demo() -> None:
    # An id of the real sandbox (e.g. -20140000008325) gets 403 from the demo's tokens.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ids = re.findall(r"(?<![\w-])-\d{14}\b", readme)
    assert ids, "the README's curl flow shows a patient id"
    assert [i for i in ids if user_for_patient_id(i) is None] == []
