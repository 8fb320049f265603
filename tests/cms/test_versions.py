"""v2 and v3 in one deployment: each authorization, token call and search uses its own version's
endpoints and rules (bb2-v3.md §2, §4), whatever `BLUEBUTTON_CMS_API_VERSION` says."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx

from bluebutton.cms.pending import MemoryPendingStore, PendingAuthorization
from tests.cms.test_pending import redis_store
from tests.factories import (
    AUTHORIZE,
    CALLBACK,
    CMS_ORIGIN,
    JSON_ACCEPT,
    REFRESH,
    REVOKE,
    TOKEN,
    cms_page,
    fhir_response,
    make_eob,
    make_settings,
    token_body,
)
from tests.running import EOB, cms_client, ids, open_client
from tests.services import REDIS_URL, redis_unavailable
from tests.wire import form_of, query_of


@pytest.fixture
def cms() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=CMS_ORIGIN, assert_all_called=False) as router:
        for version in (2, 3):
            router.post(f"/v{version}/o/token/", name=f"token{version}").mock(
                side_effect=lambda request: httpx.Response(200, json=token_body())
            )
            router.post(f"/v{version}/o/revoke_token/", name=f"revoke{version}").mock(
                return_value=httpx.Response(200)
            )
        yield router


async def test_authorize_on_v3_in_a_v2_deployment_exchanges_the_code_on_v3(cms: respx.MockRouter) -> None:
    async with open_client(make_settings()) as client:
        response = await client.get(AUTHORIZE, params={"version": "3"}, headers={"Accept": JSON_ACCEPT})
        url = response.json()["authorize_url"]
        assert url.startswith(f"{CMS_ORIGIN}/v3/o/authorize/?")
        query = query_of(url)
        assert query["scope"]  # required on v3 (§2.2)

        callback = await client.get(CALLBACK, params={"code": "code-1", "state": query["state"]})

        assert callback.status_code == 200, callback.text
        assert callback.json()["api_version"] == 3
        assert cms.routes["token3"].call_count == 1 and cms.routes["token2"].call_count == 0


async def test_the_default_version_is_the_configured_one(cms: respx.MockRouter) -> None:
    async with open_client(make_settings(cms_api_version=3)) as client:
        response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})
        query = query_of(response.json()["authorize_url"])
        callback = await client.get(CALLBACK, params={"code": "code-1", "state": query["state"]})
        assert callback.json()["api_version"] == 3


@pytest.mark.parametrize("value", ["1", "4", "v3", ""])
async def test_an_unknown_version_is_refused(cms: respx.MockRouter, value: str) -> None:
    async with open_client(make_settings()) as client:
        response = await client.get(AUTHORIZE, params={"version": value}, headers={"Accept": JSON_ACCEPT})
        assert response.status_code == 422
        assert response.json()["issue"][0]["expression"] == ["version"]


async def test_refresh_and_revoke_use_the_tokens_version(cms: respx.MockRouter) -> None:
    async with open_client(make_settings()) as client:
        refreshed = await client.post(REFRESH, json={"refresh_token": "r-1", "api_version": 3})
        assert refreshed.status_code == 200 and refreshed.json()["api_version"] == 3
        request = cms.routes["token3"].calls.last.request
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"  # v3 needs it
        assert form_of(request) == {"grant_type": "refresh_token", "refresh_token": "r-1"}
        revoked = await client.post(REVOKE, json={"token": "a-1", "api_version": 3})
        assert revoked.status_code == 204 and cms.routes["revoke3"].call_count == 1
        default = await client.post(REFRESH, json={"refresh_token": "r-2"})
        assert default.json()["api_version"] == 2 and cms.routes["token2"].call_count == 1


async def test_v3_request_denied_is_a_refused_refresh_with_cms_words(cms: respx.MockRouter) -> None:
    cms.routes["token3"].mock(
        return_value=httpx.Response(403, json={"status_code": 403, "message": "Request denied"})
    )
    async with open_client(make_settings()) as client:
        response = await client.post(REFRESH, json={"refresh_token": "unknown", "api_version": 3})
    assert response.status_code == 401
    assert "Request denied" in " ".join(i["diagnostics"] for i in response.json()["issue"])


async def test_v3_follows_next_and_never_plans_by_total() -> None:
    """v3's `total` is only the last page's count (§4): a first page claiming one is not trusted."""
    claims = [make_eob(n) for n in range(120)]
    pages = [
        cms_page(claims[:50], total=50, next_url=f"{CMS_ORIGIN}/v3/fhir/{EOB}?_count=50&_offset=50"),
        cms_page(claims[50:100], next_url=f"{CMS_ORIGIN}/v3/fhir/{EOB}?_count=50&_offset=100"),
        cms_page(claims[100:], total=20),
    ]
    with respx.mock(base_url=f"{CMS_ORIGIN}/v3/fhir/", assert_all_called=False) as v3:
        route = v3.get(EOB).mock(
            side_effect=lambda r: fhir_response(pages[int(r.url.params.get("_offset", "0")) // 50])
        )
        async with cms_client() as client:  # a v2 deployment, asked for v3
            got = [p async for p in client.iter_pages(EOB, [("_count", "50")], TOKEN, version=3)]
    assert ids(got) == [c["id"] for c in claims]
    assert [c.request.url.params.get("_offset") for c in route.calls] == [None, "50", "100"]


@pytest.mark.parametrize(
    ("include", "given", "sent"),
    [
        pytest.param(False, [], None, id="default-final-only"),
        pytest.param(True, [], "NCH,DDPS,FISS,MCS,VMS", id="not-final-included"),
        pytest.param(True, [("_source", "DDPS")], "DDPS", id="caller-source-kept"),
    ],
)
async def test_not_final_claims_setting(
    include: bool, given: list[tuple[str, str]], sent: str | None
) -> None:
    with respx.mock(base_url=f"{CMS_ORIGIN}/v3/fhir/", assert_all_called=False) as v3:
        route = v3.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)], total=1)))
        async with cms_client(cms_include_not_final=include) as client:
            [_ async for _ in client.iter_pages(EOB, [("_count", "50"), *given], TOKEN, version=3)]
    assert route.calls.last.request.url.params.get("_source") == sent


async def test_the_pending_authorization_remembers_its_version() -> None:
    pending = PendingAuthorization("s" * 43, "v" * 86, 1.0, sync=True, version=3)
    memory = MemoryPendingStore()
    await memory.put(pending, 60)
    assert await memory.take(pending.state) == pending


async def test_the_redis_pending_authorization_remembers_its_version() -> None:
    reason = redis_unavailable(REDIS_URL)
    if reason is not None:
        pytest.skip(reason)
    pending = PendingAuthorization("s" * 43, "v" * 86, 1.0, sync=True, version=3)
    async with redis_store(REDIS_URL) as (store, _):
        await store.put(pending, 60)
        assert await store.take(pending.state) == pending


async def test_userinfo_takes_the_version_and_refuses_a_misspelt_one(cms: respx.MockRouter) -> None:
    cms.get("/v3/connect/userinfo").mock(
        return_value=httpx.Response(200, json={"sub": "-3025", "patient": "-3025"})
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with open_client(make_settings()) as client:
        answer = await client.get("/bluebutton/userinfo", params={"version": "3"}, headers=headers)
        assert answer.status_code == 200 and answer.json()["patient"] == "-3025"
        typo = await client.get("/bluebutton/userinfo", params={"versoin": "3"}, headers=headers)
        assert typo.status_code == 422
        assert typo.json()["issue"][0]["expression"] == ["versoin"]
