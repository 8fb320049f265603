"""Dockerfile and .dockerignore: locked dependencies, non-root, no secrets, a real health check.

The health-check script is embedded in the Dockerfile (a heredoc); it is extracted here and run
against local HTTPS servers, so what the container runs is what is tested.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest

from bluebutton.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CERT = ROOT / "local-certs" / "server.pem"
KEY = ROOT / "local-certs" / "server.key"
HEALTHCHECK = "/usr/local/bin/bluebutton-healthcheck"


@dataclass
class Instruction:
    keyword: str
    args: str
    heredoc: str | None = None


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions, with line continuations joined and heredoc bodies attached."""
    lines = text.splitlines()
    instructions: list[Instruction] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        marker = re.search(r"<<-?'?\"?(\w+)", args)
        if marker:
            end = lines.index(marker.group(1), i)
            instruction.heredoc = "\n".join(lines[i:end]) + "\n"
            i = end + 1
        instructions.append(instruction)
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    start = max(n for n, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[start:]


def flagless(args: str) -> list[str]:
    return [word for word in args.split() if not word.startswith("--")]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def script(instructions: list[Instruction], tmp_path_factory: pytest.TempPathFactory) -> Path:
    [copy] = [i for i in instructions if i.heredoc and i.args.endswith(HEALTHCHECK)]
    assert "--chmod=0755" in copy.args
    path = tmp_path_factory.mktemp("healthcheck") / "bluebutton-healthcheck"
    path.write_text(copy.heredoc or "")
    return path


# --- the image ----------------------------------------------------------------------------------


def test_base_image_is_a_pinned_python_3_11_slim(instructions: list[Instruction]) -> None:
    [arg] = [i for i in instructions if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", arg.args)
    bases = [flagless(i.args)[0] for i in instructions if i.keyword == "FROM"]
    assert bases == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_dependencies_come_from_the_lock_file_only(instructions: list[Instruction]) -> None:
    commands = [c.strip() for i in instructions if i.keyword == "RUN" for c in i.args.split("&&")]
    assert "pipenv verify" in commands  # refuses a lock file out of date with Pipfile
    assert "pipenv requirements --hash > requirements.txt" in commands  # default packages only
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    assert len(installs) == 2
    for command in installs:
        # Either one pinned build tool, or exactly the hashed wheels of the lock file.
        pinned_tool = re.fullmatch(r"pip install [\w-]+==[\w.]+", command)
        locked = all(f in command for f in ("--require-hashes", "--only-binary=:all:", "--no-deps"))
        assert pinned_tool or (locked and command.endswith("-r requirements.txt")), command


def test_copy_sources_exist_and_are_in_the_build_context(instructions: list[Instruction]) -> None:
    sources = []
    for ins in instructions:
        if ins.keyword in ("COPY", "ADD") and ins.heredoc is None and "--from=" not in ins.args:
            sources += flagless(ins.args)[:-1]
    assert sources == ["Pipfile", "Pipfile.lock", "bluebutton/"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source.rstrip("/")), source


def test_runs_as_non_root(instructions: list[Instruction]) -> None:
    users = [i.args for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_exposes_the_service_port(instructions: list[Instruction]) -> None:
    port = Settings.model_fields["port"].default
    exposed = [i.args for i in final_stage(instructions) if i.keyword == "EXPOSE"]
    assert exposed == [str(port)]


def test_healthcheck_and_command(instructions: list[Instruction]) -> None:
    stage = final_stage(instructions)
    [health] = [i.args for i in stage if i.keyword == "HEALTHCHECK"]
    assert health.endswith('CMD ["bluebutton-healthcheck"]')
    [cmd] = [i.args for i in stage if i.keyword == "CMD"]
    assert cmd == '["python", "-m", "bluebutton"]'


def test_env_defaults_suit_a_container(instructions: list[Instruction]) -> None:
    declared = " ".join(i.args for i in final_stage(instructions) if i.keyword == "ENV")
    env = dict(re.findall(r"(\w+)=(\S+)", declared))
    assert env["BLUEBUTTON_HOST"] == "0.0.0.0"  # noqa: S104 - reachable through published ports
    assert env["BLUEBUTTON_PORT"] == "5200"
    fields = {f"BLUEBUTTON_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("BLUEBUTTON_")} <= fields
    # docker-compose.yml mounts local-certs/ there; the image itself has no certificate.
    assert env["BLUEBUTTON_TLS_CERT"] == "/etc/bluebutton/tls/server.pem"
    assert env["BLUEBUTTON_TLS_KEY"] == "/etc/bluebutton/tls/server.key"


def test_no_secrets_in_the_image(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"SECRET|PASSWORD|TOKEN|CLIENT_ID", ins.args, re.IGNORECASE), ins
        if ins.keyword in ("COPY", "ADD"):
            assert not re.search(r"local-certs|\.env|\.key|\.pem", ins.args), ins


# --- .dockerignore ------------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _pattern(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_compose.py",
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "local-certs/server.key",
        "connect-sandbox.sqlite3",
        "bluebutton/__pycache__/app.cpython-311.pyc",
        "bluebutton/sandbox/connect-sandbox.sqlite3",
        "bluebutton/.env",
        "README.md",
        "docs/index.md",
        "mkdocs.yml",
        "site/index.html",
        "docker-compose.yml",
        ".pytest_cache/v/cache/nodeids",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "Pipfile",
        "Pipfile.lock",
        "bluebutton/__main__.py",
        "bluebutton/sandbox/__init__.py",
        "bluebutton/sandbox/cms/__main__.py",
        "bluebutton/sandbox/connect/__main__.py",
    ],
)
def test_dockerignore_keeps(path: str) -> None:
    assert not dockerignored(path)


# --- the health-check script --------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(tls: bool) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(CERT, KEY)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def https_port() -> Iterator[int]:
    yield from _serve(tls=True)


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    yield from _serve(tls=False)


def probe(script: Path, *args: str, **env: str) -> int:
    environ = {"PATH": os.environ.get("PATH", ""), "BLUEBUTTON_TLS_CERT": str(CERT), **env}
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode


def test_healthcheck_reads_the_environment(script: Path, https_port: int) -> None:
    assert probe(script, BLUEBUTTON_PORT=str(https_port)) == 0


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param([], {}, 0, id="served-chain-as-anchor"),
        pytest.param([f"--cert={ROOT / 'local-certs' / 'ca.pem'}"], {}, 0, id="issuing-ca"),
        pytest.param(["--cert=LEAF"], {}, 0, id="leaf-only-anchor"),
        pytest.param([f"--cert={certifi.where()}"], {}, 1, id="untrusted-certificate"),
        pytest.param(["--server-name=example.org"], {}, 1, id="name-not-in-certificate"),
        pytest.param(
            [],
            {"BLUEBUTTON_CALLBACK_URL": "https://connect-sandbox:5200/cb"},
            0,
            id="callback-host-in-certificate",
        ),
        pytest.param(
            [],
            {"BLUEBUTTON_CALLBACK_URL": "https://example.org/cb"},
            1,
            id="callback-host-not-in-certificate",
        ),
        pytest.param(["--path=/missing"], {}, 1, id="not-200"),
        pytest.param(["--path=/missing", "--any-status"], {}, 0, id="any-status"),
        pytest.param(["--no-tls"], {}, 1, id="plain-http-to-https"),
    ],
)
def test_healthcheck_verifies_tls(
    script: Path,
    https_port: int,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    expected: int,
) -> None:
    leaf = tmp_path / "leaf.pem"
    pem = CERT.read_text()
    leaf.write_text(pem[: pem.index("-----END CERTIFICATE-----") + 26])
    args = [a.replace("LEAF", str(leaf)) for a in args]
    assert probe(script, f"--port={https_port}", *args, **env) == expected


def test_healthcheck_without_tls(script: Path, http_port: int) -> None:
    assert probe(script, BLUEBUTTON_PORT=str(http_port), BLUEBUTTON_TLS="false") == 0


def test_healthcheck_nothing_listening(script: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        assert probe(script, f"--port={unused.getsockname()[1]}") == 1
