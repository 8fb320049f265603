"""`python -m bluebutton healthcheck` against local servers: TLS is verified with the served
certificate as the anchor, the name is the callback's host, and only the answer it should counts.

The servers are the standard library's, over the development certificate; the probe runs in-process
through `main()` with the settings read from the environment, as in the container.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest

from bluebutton.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
CERT = ROOT / "local-certs" / "server.pem"
KEY = ROOT / "local-certs" / "server.key"


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


Probe = Callable[..., int]


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Probe:
    """`python -m bluebutton healthcheck ARGS` with only the given BLUEBUTTON_* variables set."""
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name in [n for n in os.environ if n.upper().startswith("BLUEBUTTON_")]:
        monkeypatch.delenv(name)

    def run(*args: str, **env: str) -> int:
        with monkeypatch.context() as scoped:
            scoped.setenv("BLUEBUTTON_TLS_CERT", str(CERT))
            scoped.setenv("BLUEBUTTON_TLS_KEY", str(KEY))
            for name, value in env.items():
                scoped.setenv(name, value)
            return main(["healthcheck", *args])

    return run


def test_healthcheck_reads_the_port_from_the_settings(
    probe: Probe, https_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert probe(BLUEBUTTON_PORT=str(https_port)) == 0
    assert capsys.readouterr().out == "healthy: GET /health -> 200\n"


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
        pytest.param([], {"BLUEBUTTON_TLS": "false"}, 1, id="tls-off-in-settings-to-https"),
    ],
)
def test_healthcheck_verifies_tls(
    probe: Probe,
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
    assert probe(f"--port={https_port}", *args, **env) == expected


def test_healthcheck_without_tls(probe: Probe, http_port: int) -> None:
    assert probe(BLUEBUTTON_PORT=str(http_port), BLUEBUTTON_TLS="false") == 0


def test_healthcheck_nothing_listening(probe: Probe, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        assert probe(f"--port={unused.getsockname()[1]}") == 1
    assert capsys.readouterr().err.startswith("unhealthy: ")


def test_a_bad_setting_is_unhealthy_not_a_crash(
    probe: Probe, https_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Docker reserves exit status 2; a probe that cannot read its settings reports unhealthy (1).
    assert probe(f"--port={https_port}", BLUEBUTTON_CMS_API_VERSION="4") == 1
    err = capsys.readouterr().err
    assert "BLUEBUTTON_CMS_API_VERSION" in err and "unhealthy" in err
