"""`GET /bluebutton/userinfo` through the real app: the beneficiary's profile from CMS's
`/v{n}/connect/userinfo`, the token sent only there, and the error table of `/bluebutton/fhir`
(issue 11, "One gap against the CMS SDK")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from tests.factories import AUTH, CMS_ORIGIN, TOKEN, make_settings
from tests.running import open_client
from tests.wire import diagnostics, outcome_issues

USERINFO = "/bluebutton/userinfo"
PROFILE = {
    "sub": "-19990000000043",
    "name": "Jane Doe",
    "given_name": "Jane",
    "family_name": "Doe",
    "email": "bbuser00042@example.com",
    "iat": "2021-03-01T12:00:00Z",
    "patient": "-19990000000043",
}


@pytest.fixture
def cms() -> Iterator[respx.MockRouter]:
    """All of CMS: only the userinfo route answers; anything else reaching CMS is a 404 here."""
    with respx.mock(base_url=CMS_ORIGIN, assert_all_called=False) as router:
        router.get("/v2/connect/userinfo", name="userinfo").mock(
            return_value=httpx.Response(200, json=PROFILE)
        )
        yield router


async def test_the_profile_is_passed_on_and_the_token_went_only_to_cms(
    client: httpx.AsyncClient, cms: respx.MockRouter
) -> None:
    response = await client.get(USERINFO, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == PROFILE
    assert response.headers["cache-control"] == "no-store"
    (call,) = cms.calls
    assert str(call.request.url) == f"{CMS_ORIGIN}/v2/connect/userinfo"
    assert call.request.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param({**PROFILE, "phone": "555"}, id="a-field-cms-adds-later"),
        pytest.param({"sub": PROFILE["sub"], "patient": PROFILE["patient"]}, id="fields-left-out"),
    ],
)
async def test_the_profile_is_exactly_what_cms_sent(
    client: httpx.AsyncClient, cms: respx.MockRouter, profile: dict[str, str]
) -> None:
    cms.routes["userinfo"].mock(return_value=httpx.Response(200, json=profile))
    assert (await client.get(USERINFO, headers=AUTH)).json() == profile


async def test_version_and_path_prefix_are_those_of_the_settings() -> None:
    settings = make_settings(
        cms_base_url=f"{CMS_ORIGIN}/behind/proxy", cms_api_version=3, validation_workers=1
    )
    with respx.mock(base_url=CMS_ORIGIN, assert_all_called=True) as cms:
        route = cms.get("/behind/proxy/v3/connect/userinfo").mock(
            return_value=httpx.Response(200, json=PROFILE)
        )
        async with open_client(settings) as client:
            response = await client.get(USERINFO, headers=AUTH)
    assert response.status_code == 200 and route.call_count == 1


async def test_no_token_is_401_without_calling_cms(client: httpx.AsyncClient, cms: respx.MockRouter) -> None:
    response = await client.get(USERINFO)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert not cms.calls


async def test_withheld_profile_scope_is_a_clear_403(
    client: httpx.AsyncClient, cms: respx.MockRouter
) -> None:
    denied = {"detail": "You do not have permission to perform this action."}
    cms.routes["userinfo"].mock(return_value=httpx.Response(403, json=denied))
    response = await client.get(USERINFO, headers=AUTH)
    assert response.status_code == 403
    text = diagnostics(response)
    assert "`profile` scope" in text and "share demographic data" in text
    assert denied["detail"] in text
    assert outcome_issues(response)[0]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("answer", "status", "code", "says"),
    [
        pytest.param(
            httpx.Response(401, json={"detail": "Authentication credentials were not provided."}),
            401,
            "login",
            "newer authorization",
            id="401",
        ),
        pytest.param(
            httpx.Response(404, json={"detail": "Not found."}), 404, "not-found", "no such", id="404"
        ),
        pytest.param(
            httpx.Response(429, headers={"Retry-After": "7"}), 429, "throttled", "retry later", id="429"
        ),
        pytest.param(httpx.Response(503, text="busy"), 502, "transient", "HTTP 503", id="503"),
        pytest.param(
            httpx.Response(200, text="<html>"), 502, "transient", "not a JSON object", id="not-json"
        ),
        pytest.param(
            httpx.Response(200, json=["a"]), 502, "transient", "not a JSON object", id="not-an-object"
        ),
        pytest.param(httpx.ReadTimeout("slow"), 504, "timeout", "did not answer", id="timeout"),
        pytest.param(httpx.ConnectError("refused"), 502, "transient", "could not reach", id="unreachable"),
    ],
)
async def test_cms_errors_map_as_for_fhir(
    client: httpx.AsyncClient, cms: respx.MockRouter, answer: Any, status: int, code: str, says: str
) -> None:
    if isinstance(answer, httpx.Response):
        cms.routes["userinfo"].mock(return_value=answer)
    else:
        cms.routes["userinfo"].mock(side_effect=answer)
    response = await client.get(USERINFO, headers=AUTH)
    assert response.status_code == status, response.text
    assert outcome_issues(response)[0]["code"] == code
    assert says in diagnostics(response)
    assert TOKEN not in response.text
    if status == 429:
        assert response.headers["retry-after"] == "7"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_openapi_documents_it(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"][USERINFO]["get"]
    assert operation["security"] == [{"BlueButtonToken": []}]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Userinfo"
    }
    assert {"401", "403", "502", "504"} <= set(operation["responses"])
