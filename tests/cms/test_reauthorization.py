"""A new authorization ends the same beneficiary's earlier tokens (CMS does so, and the emulator on
purpose): the 401s a caller then meets say so, so the caller re-uses the newest token (issue 11)."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.factories import AUTH, REFRESH, fhir_response
from tests.fakes import Connect
from tests.wire import diagnostics

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")

ENDED = "a newer authorization of the same beneficiary ends its earlier tokens"


async def test_fhir_401_says_a_newer_authorization_ends_earlier_tokens(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    cms_mock.get("Coverage").mock(
        return_value=fhir_response({"detail": "Authentication credentials were not provided."}, 401)
    )
    response = await client.get("/bluebutton/fhir", params={"resource_type": "Coverage"}, headers=AUTH)
    assert response.status_code == 401
    text = diagnostics(response)
    assert ENDED in text and "newest" in text, text


async def test_refresh_401_says_a_newer_authorization_ends_earlier_tokens(client: httpx.AsyncClient) -> None:
    with respx.mock(base_url="https://cms.test", assert_all_called=True) as cms:
        cms.post("/v2/o/token/").mock(return_value=httpx.Response(400, json={"error": "invalid_grant"}))
        response = await client.post(REFRESH, json={"refresh_token": "replaced-refresh"})
    assert response.status_code == 401
    assert ENDED in diagnostics(response)
