"""`python -m bluebutton`: a bad setting stops start-up with one line; a good one serves HTTPS, warns
what a newcomer must know, and keeps uvicorn's connection limits; `--help` prints help."""

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

from bluebutton.__main__ import (
    LIMIT_CONCURRENCY,
    MAX_INCOMPLETE_EVENT_BYTES,
    TIMEOUT_KEEP_ALIVE_SECONDS,
    main,
    startup_warnings,
)
from bluebutton.fhir import validation_patches
from bluebutton.settings import Settings
from tests.factories import CERTS, ROOT, make_settings


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


# --------------------------------------------------------------- help, start-up warnings, limits


def test_help_prints_every_command_and_where_settings_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m bluebutton")
    for command in ("serve", "migrate", "worker", "keygen", "rotate-keys"):
        assert command in out
    assert "BLUEBUTTON_" in out


def test_a_command_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--help"]) == 0
    assert "standalone sync worker" in capsys.readouterr().out


def test_a_stray_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "6201"]) == 2
    assert "unrecognized arguments: --port 6201" in capsys.readouterr().err


def test_a_newcomer_with_no_settings_is_warned_three_times() -> None:
    defaults = Settings.model_fields
    settings = make_settings(
        tls=True,
        host=defaults["host"].default,
        tls_cert=defaults["tls_cert"].default,
        tls_key=defaults["tls_key"].default,
        cms_client_id=None,
        cms_client_secret=None,
    )
    warnings = startup_warnings(settings)
    assert len(warnings) == 3, warnings
    credentials, certificate, interfaces = warnings
    assert "BLUEBUTTON_CMS_CLIENT_ID and BLUEBUTTON_CMS_CLIENT_SECRET" in credentials and "503" in credentials
    assert "development certificate" in certificate and "BLUEBUTTON_TLS_CERT" in certificate
    assert "all interfaces (0.0.0.0:5200)" in interfaces and "BLUEBUTTON_HOST=127.0.0.1" in interfaces


@pytest.mark.parametrize(
    ("overrides", "count"),
    [
        pytest.param({"host": "127.0.0.1", "tls": True}, 1, id="dev-cert-on-loopback"),
        pytest.param({"host": "0.0.0.0", "tls": False}, 0, id="plain-http-behind-a-proxy"),  # noqa: S104
        pytest.param({"cms_client_secret": None}, 1, id="secret-missing"),
        pytest.param({"tls": True, "tls_cert": CERTS / "ca.pem", "host": "0.0.0.0"}, 0, id="own-cert"),  # noqa: S104
    ],
)
def test_each_warning_has_its_own_condition(overrides: dict[str, object], count: int) -> None:
    assert len(startup_warnings(make_settings(**overrides))) == count


def test_the_connection_limits_are_in_the_settings_page() -> None:
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    settings_section = page.split("## The server's fixed limits", 1)[1].split("\n## ", 1)[0]
    for value in (
        f"`timeout_keep_alive` {TIMEOUT_KEEP_ALIVE_SECONDS} s",
        f"`limit_concurrency` {LIMIT_CONCURRENCY}",
        f"`h11_max_incomplete_event_size` {MAX_INCOMPLETE_EVENT_BYTES:,} bytes",
    ):
        assert value in settings_section, value


@pytest.mark.slow
def test_start_up_warns_and_refuses_oversized_headers(
    tmp_path: Path, server: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, process = server
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    assert wait_for_health(f"https://127.0.0.1:{port}/health", context, process).status_code == 200
    # Headers that never end (a slow or hostile client): once more than the limit is buffered the
    # server answers 400 and closes, instead of holding the connection open for ever.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: "
            + b"a" * (MAX_INCOMPLETE_EVENT_BYTES + 1024)
        )
        answer = tls.recv(1024)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    # a complete request with large headers is served
    near = httpx.get(
        f"https://127.0.0.1:{port}/health", headers={"X-Padding": "a" * 8192}, verify=context, timeout=10
    )
    assert near.status_code == 200
    process.terminate()
    process.wait(timeout=20)
    log = (tmp_path / "server.log").read_text(encoding="utf-8")
    warnings = [line for line in log.splitlines() if " WARNING bluebutton: " in line]
    assert len(warnings) == 2, log  # credentials and the development certificate, not 0.0.0.0
    assert "BLUEBUTTON_CMS_CLIENT_ID" in warnings[0] and "development certificate" in warnings[1]
