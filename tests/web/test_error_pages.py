"""Errors met in the browser on the authorization routes are an HTML page with a way to start
again; API clients keep the `OperationOutcome` (issue 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
import respx

from tests.factories import AUTHORIZE, BROWSER_ACCEPT, CALLBACK, JSON_ACCEPT, make_settings, token_body
from tests.running import open_client
from tests.wire import diagnostics, outcome_issues, parse_html, query_of

OAUTH = "https://cms.test/v2/o/"


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(make_settings(validation_workers=1)) as c:
        yield c


@pytest.fixture
def cms() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=OAUTH, assert_all_called=False) as router:
        router.post("token/", name="token").mock(side_effect=lambda _: httpx.Response(200, json=token_body()))
        yield router


async def new_state(client: httpx.AsyncClient) -> str:
    response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})
    return query_of(response.json()["authorize_url"])["state"]


def assert_error_page(response: httpx.Response, status: int, *reasons: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = parse_html(response.text)
    assert page.by_id["start-again"].attrs["href"] == AUTHORIZE
    text = page.by_id["reasons"].text
    for reason in reasons:
        assert reason in text, text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp


async def test_reloading_the_token_page_gives_a_page_to_start_again(
    client: httpx.AsyncClient, cms: respx.MockRouter
) -> None:
    params = {"code": "code-1", "state": await new_state(client)}
    first = await client.get(CALLBACK, params=params, headers={"Accept": BROWSER_ACCEPT})
    assert first.status_code == 200 and "access-token" in parse_html(first.text).by_id
    reload = await client.get(CALLBACK, params=params, headers={"Accept": BROWSER_ACCEPT})
    assert_error_page(reload, 400, "already used state")
    assert cms.routes["token"].call_count == 1


async def test_pressing_deny_gives_a_page_to_start_again(
    client: httpx.AsyncClient, cms: respx.MockRouter
) -> None:
    params = {"error": "access_denied", "state": await new_state(client)}
    response = await client.get(CALLBACK, params=params, headers={"Accept": BROWSER_ACCEPT})
    assert_error_page(response, 403, "declined")
    assert not cms.calls


async def test_a_failed_exchange_says_the_state_is_spent_and_how_to_start_again(
    client: httpx.AsyncClient, cms: respx.MockRouter
) -> None:
    cms.routes["token"].mock(return_value=httpx.Response(400, json={"error": "invalid_grant"}))
    for accept in (BROWSER_ACCEPT, JSON_ACCEPT):
        params = {"code": "code-1", "state": await new_state(client)}
        response = await client.get(CALLBACK, params=params, headers={"Accept": accept})
        if accept == BROWSER_ACCEPT:
            assert_error_page(response, 502, "invalid_grant", "used up", "Start again")
        else:
            assert response.status_code == 502
            spent = outcome_issues(response)[-1]
            assert spent["severity"] == "information" and "used up" in spent["diagnostics"]
            assert "Start again at GET /bluebutton/authorize" in spent["diagnostics"]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"code": "c", "state": "never-issued"}, id="unknown-state"),
        pytest.param({"error": "access_denied"}, id="deny"),
        pytest.param({"state": "x" * 600}, id="invalid-query-422"),
    ],
)
async def test_api_clients_keep_the_operation_outcome(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get(CALLBACK, params=params, headers={"Accept": JSON_ACCEPT})
    assert response.status_code in (400, 403, 422)
    assert response.headers["content-type"] == "application/fhir+json"
    assert diagnostics(response)


async def test_an_invalid_callback_query_in_the_browser_is_a_page_too(client: httpx.AsyncClient) -> None:
    response = await client.get(CALLBACK, params={"state": "x" * 600}, headers={"Accept": BROWSER_ACCEPT})
    assert_error_page(response, 422, "state")


async def test_what_cms_sent_is_escaped(client: httpx.AsyncClient) -> None:
    params = {"error": "invalid_scope", "error_description": "<script>alert(1)</script>"}
    response = await client.get(CALLBACK, params=params, headers={"Accept": BROWSER_ACCEPT})
    assert_error_page(response, 400, "<script>alert(1)</script>")  # as text, in the parsed page
    assert "<script>" not in response.text


async def test_other_routes_answer_browsers_with_the_operation_outcome(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/bluebutton/fhir", params={"resource_type": "Coverage"}, headers={"Accept": BROWSER_ACCEPT}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/fhir+json"
