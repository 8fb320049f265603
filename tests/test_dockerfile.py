"""Dockerfile and .dockerignore: locked dependencies, non-root, no secrets, a real health check.

The image's HEALTHCHECK command is read from the Dockerfile and run against the service started as
the image's CMD starts it, so what the container runs is what is tested (the probe's TLS cases are
in tests/test_healthcheck.py).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bluebutton.settings import Settings
from tests.test_main import free_port, service_env, wait_for_health

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CERT = ROOT / "local-certs" / "server.pem"
KEY = ROOT / "local-certs" / "server.key"


@dataclass
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions, with line continuations joined."""
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
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    start = max(n for n, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[start:]


def flagless(args: str) -> list[str]:
    return [word for word in args.split() if not word.startswith("--")]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


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
        if ins.keyword in ("COPY", "ADD") and "--from=" not in ins.args:
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


def exec_form(instructions: list[Instruction], keyword: str) -> list[str]:
    """The JSON array of the final stage's CMD, or of its HEALTHCHECK's CMD."""
    [args] = [i.args for i in final_stage(instructions) if i.keyword == keyword]
    command: list[str] = json.loads(args[args.index("[") :])
    return command


def test_healthcheck_and_command(instructions: list[Instruction]) -> None:
    assert exec_form(instructions, "HEALTHCHECK") == ["python", "-m", "bluebutton", "healthcheck"]
    assert exec_form(instructions, "CMD") == ["python", "-m", "bluebutton"]
    # The exec form runs no shell, and `python -m` finds the package in the working directory.
    [workdir] = [i.args for i in final_stage(instructions) if i.keyword == "WORKDIR"]
    assert workdir == "/app" and "COPY bluebutton/ ./bluebutton/" in [
        f"{i.keyword} {i.args}" for i in final_stage(instructions)
    ]


def test_the_dependency_step_builds_nkeys_alone_from_source(instructions: list[Instruction]) -> None:
    # nkeys (nats-py[nkeys]) is published as a source archive only: with --only-binary=:all: alone,
    # pip finds no distribution and the build stops (issue 19). Everything else stays a wheel.
    [install] = [
        c for i in instructions if i.keyword == "RUN" for c in i.args.split("&&") if "-r requirements" in c
    ]
    assert "--only-binary=:all:" in install.split()
    assert [w for w in install.split() if w.startswith("--no-binary")] == ["--no-binary=nkeys"]
    locked = json.loads((ROOT / "Pipfile.lock").read_text())["default"]
    assert "nkeys" in locked


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


# --- the health check, run as the container runs it ---------------------------------------------


def image_env(instructions: list[Instruction], **overrides: str) -> dict[str, str]:
    """The final stage's BLUEBUTTON_* ENV defaults, with this host's paths and ports swapped in."""
    declared = " ".join(i.args for i in final_stage(instructions) if i.keyword == "ENV")
    env = {k: v for k, v in re.findall(r"(BLUEBUTTON_\w+)=(\S+)", declared)}
    env.update(overrides)
    return service_env(**{k.removeprefix("BLUEBUTTON_"): v for k, v in env.items()})


def run_healthcheck(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *command[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_the_image_health_check_passes_on_the_service_and_fails_once_it_stops(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    port = free_port()
    env = image_env(
        instructions,
        BLUEBUTTON_HOST="127.0.0.1",  # loopback only here; the image listens on all interfaces
        BLUEBUTTON_PORT=str(port),
        BLUEBUTTON_TLS_CERT=str(CERT),
        BLUEBUTTON_TLS_KEY=str(KEY),
        BLUEBUTTON_VALIDATION_WORKERS="1",
    )
    healthcheck, cmd = exec_form(instructions, "HEALTHCHECK"), exec_form(instructions, "CMD")
    assert cmd[0] == healthcheck[0] == "python"
    with (tmp_path / "server.log").open("wb") as log:
        # An empty working directory: no developer .env; PYTHONPATH stands in for WORKDIR /app.
        server = subprocess.Popen(
            [sys.executable, *cmd[1:]], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            context = ssl.create_default_context(cafile=str(CERT))
            assert wait_for_health(f"https://127.0.0.1:{port}/health", context, server).status_code == 200
            healthy = run_healthcheck(healthcheck, env, tmp_path)
            assert healthy.returncode == 0, healthy.stderr
            assert healthy.stdout.strip() == "healthy: GET /health -> 200"
        finally:
            server.terminate()
            server.wait(timeout=30)
    stopped = run_healthcheck(healthcheck, env, tmp_path)
    assert stopped.returncode == 1
    assert stopped.stderr.startswith("unhealthy: ") and "Traceback" not in stopped.stderr


def test_ci_builds_the_image_and_runs_its_health_check() -> None:
    # scripts/image-check does it with buildah (no Docker engine); CI runs it beside the suite.
    assert "sh scripts/image-check" in (ROOT / ".ci" / "run").read_text()
    script = (ROOT / "scripts" / "image-check").read_text()
    assert "buildah build --isolation chroot --format docker" in script and "-f Dockerfile ." in script
    # The health check and the command it runs are the image's own, read from its configuration.
    assert 'c["Healthcheck"]["Test"]' in script and 'c["Cmd"]' in script
