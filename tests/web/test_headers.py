"""Security headers through the real app: no caching of FHIR data or tokens, HSTS when serving TLS,
Swagger UI not framable (issue 11, "Responses and headers")."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.factories import AUTH, CERTS, cms_page, fhir_response, make_eob, make_settings
from tests.fakes import Connect
from tests.running import open_client

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")

EOB = "ExplanationOfBenefit"


async def test_fhir_answer_is_not_cacheable(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)], total=1)))
    for return_cms in ("true", "false"):
        response = await client.get(
            "/bluebutton/fhir", params={"resource_type": EOB, "return_cms": return_cms}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"


async def test_fhir_errors_are_not_cacheable_either(client: httpx.AsyncClient) -> None:
    response = await client.get("/bluebutton/fhir", params={"resource_type": EOB})
    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store"


async def test_a_route_that_sets_its_own_cache_control_keeps_it(client: httpx.AsyncClient) -> None:
    # /health carries no data: nothing is added; /bluebutton/authorize sets no-store itself, once.
    health = await client.get("/health")
    assert "cache-control" not in health.headers
    authorize = await client.get("/bluebutton/authorize", headers={"Accept": "text/html"})
    assert authorize.headers.get_list("cache-control") == ["no-store"]


async def test_docs_cannot_be_framed(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


async def test_no_hsts_over_plain_http(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert "strict-transport-security" not in response.headers


async def test_hsts_when_serving_tls() -> None:
    settings = make_settings(
        tls=True, tls_cert=CERTS / "server.pem", tls_key=CERTS / "server.key", validation_workers=1
    )
    async with open_client(settings, base_url="https://test") as client:
        for path in ("/health", "/docs", "/bluebutton/fhir"):
            response = await client.get(path)
            assert response.headers["strict-transport-security"] == "max-age=31536000", path
