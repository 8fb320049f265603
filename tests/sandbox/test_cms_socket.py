"""The CMS emulator over real loopback sockets (uvicorn in this event loop) and its command line."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bluebutton.sandbox.cms.app import create_cms_app
from bluebutton.sandbox.cms.cli import build_parser, config_from_args
from bluebutton.sandbox.cms.config import DEFAULT_REDIRECT_URI, CmsSandboxConfig
from bluebutton.sandbox.cms.faults import Faults

CERTS = Path(__file__).resolve().parents[2] / "local-certs"


@asynccontextmanager
async def serve(config: CmsSandboxConfig, tls: bool = False) -> AsyncIterator[str]:
    """Run the emulator on a free loopback port; yields its base URL."""
    options: dict[str, Any] = {}
    if tls:
        options = {"ssl_certfile": CERTS / "server.pem", "ssl_keyfile": CERTS / "server.key"}
    server = uvicorn.Server(
        uvicorn.Config(
            create_cms_app(config),
            host="127.0.0.1",
            port=0,
            access_log=False,
            lifespan="off",
            log_level="warning",
            **options,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn.Server only exposes a flag
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{port}"
    finally:
        server.should_exit = True
        await task


async def test_dropped_connection_is_a_transport_error_over_a_socket():
    async with (
        serve(CmsSandboxConfig(faults=Faults(drop_connections=2))) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.get("/v2/fhir/ExplanationOfBenefit")
        after = await client.get("/v2/fhir/ExplanationOfBenefit")
        assert after.status_code == 401  # the server is fine, the counter is spent


async def test_https_with_the_development_certificates():
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    async with (
        serve(CmsSandboxConfig(), tls=True) as base,
        httpx.AsyncClient(base_url=base, verify=context) as client,
    ):
        metadata = await client.get("/v2/fhir/metadata")
        assert metadata.status_code == 200
        assert metadata.json()["implementation"]["url"] == f"{base}/v2/fhir"
        authorize = await client.get("/v2/o/authorize/", params={"client_id": "x"})
        assert authorize.status_code == 400


def test_command_line_options_and_environment():
    env = {
        "BLUEBUTTON_SANDBOX_CMS_PORT": "6300",
        "BLUEBUTTON_SANDBOX_CMS_NO_TLS": "true",
        "BLUEBUTTON_SANDBOX_CMS_REDIRECT_URI": "https://a.test/cb, https://b.test/cb",
        "BLUEBUTTON_SANDBOX_CMS_CLAIMS": "150",
        "BLUEBUTTON_SANDBOX_CMS_FAULTS": '{"rate_limit": 3}',
        "BLUEBUTTON_SANDBOX_CMS_LATENCY_MS": "25",
    }
    args = build_parser(env).parse_args([])
    config = config_from_args(args, env)
    assert (args.port, args.no_tls, args.host) == (6300, True, "127.0.0.1")
    assert config.redirect_uris == ("https://a.test/cb", "https://b.test/cb")
    assert config.claims_override == 150 and config.latency_ms == 25
    assert config.faults.rate_limit == 3

    args = build_parser({}).parse_args(
        [
            "--port",
            "5301",
            "--redirect-uri",
            "https://x.test/1",
            "--redirect-uri",
            "https://x.test/2",
            "--client-id",
            "me",
            "--client-secret",
            "s3cret",
            "--faults",
            '{"fail_page": 50}',
        ]
    )
    config = config_from_args(args, {})
    assert args.port == 5301 and not args.no_tls
    assert args.tls_cert == CERTS / "server.pem" and args.tls_key == CERTS / "server.key"
    assert config.redirect_uris == ("https://x.test/1", "https://x.test/2")
    assert (config.client_id, config.client_secret, config.faults.fail_page) == ("me", "s3cret", 50)

    defaults = config_from_args(build_parser({}).parse_args([]), {})
    assert defaults.redirect_uris == (DEFAULT_REDIRECT_URI,) and defaults.claims_override is None
    assert build_parser({}).parse_args([]).port == 5300
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--port", "http"])
    assert build_parser({}).parse_args([]).log_level == "info"
    assert build_parser({"BLUEBUTTON_SANDBOX_CMS_LOG_LEVEL": "warning"}).parse_args([]).log_level == "warning"
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--log-level", "loud"])


def test_config_refuses_unusable_values():
    with pytest.raises(ValueError, match="redirect URI"):
        CmsSandboxConfig(redirect_uris=())
    with pytest.raises(ValueError, match="latency_ms"):
        CmsSandboxConfig(latency_ms=-1)
    with pytest.raises(ValueError, match="claims_override"):
        CmsSandboxConfig(claims_override=-5)
