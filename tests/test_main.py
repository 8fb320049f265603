"""`python -m bluebutton`: a bad setting stops start-up with one line; a good one serves HTTPS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bluebutton import validation_patches
from tests.factories import CERTS, ROOT


def service_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BLUEBUTTON_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({f"BLUEBUTTON_{k}": v for k, v in settings.items()})
    return env


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        pytest.param({"CMS_API_VERSION": "4"}, "BLUEBUTTON_CMS_API_VERSION", id="version-4"),
        pytest.param({"CMS_BASE_URL": "not a url"}, "BLUEBUTTON_CMS_BASE_URL", id="not-a-url"),
        pytest.param(
            {"TLS": "true", "TLS_CERT": "/nonexistent/server.pem"}, "BLUEBUTTON_TLS_CERT", id="missing-cert"
        ),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(
    tmp_path: Path, settings: dict[str, str], variable: str
) -> None:
    # run in an empty directory so no developer `.env` is read
    result = subprocess.run(
        [sys.executable, "-m", "bluebutton"],
        cwd=tmp_path,
        env=service_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    env = service_env(
        HOST="127.0.0.1",
        PORT=str(port),
        TLS="true",
        TLS_CERT=str(CERTS / "server.pem"),
        TLS_KEY=str(CERTS / "server.key"),
        VALIDATION_WORKERS="1",
    )
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bluebutton"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def wait_for_health(url: str, context: ssl.SSLContext, process: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"the service exited with {process.returncode} before answering")
        try:
            return httpx.get(url, verify=context, timeout=5)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
def test_serves_https_with_the_local_certificate(server: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, process = server
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    response = wait_for_health(f"https://127.0.0.1:{port}/health", context, process)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["validation"] == (
        "fast" if validation_patches.matches_checked_versions() else "standard"
    )
    assert response.headers["X-Request-ID"]
    # the certificate really is checked: without the development CA it is not trusted
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{port}/health", verify=ssl.create_default_context(), timeout=5)
    # and it is HTTPS only
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    process.terminate()
    assert process.wait(timeout=20) is not None
