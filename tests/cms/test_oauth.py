"""OAuth 2.0 with Blue Button through the real app: authorize, callback, refresh, revoke (issue 3).

CMS is a respx router; every test asserts what reached CMS's `/v{n}/o/` endpoints, not only what
the caller got back.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import markupsafe
import pytest
import respx

from bluebutton.cms.pending import MemoryPendingStore
from bluebutton.settings import Settings
from tests.factories import (
    AUTHORIZE,
    BROWSER_ACCEPT,
    CALLBACK,
    CALLBACK_URL,
    CLIENT_ID,
    CLIENT_SECRET,
    DEFAULT_SCOPES,
    JSON_ACCEPT,
    REFRESH,
    REVOKE,
    make_settings,
    token_body,
)
from tests.fakes import HeldCms, inside, until
from tests.running import client_for, open_client, running_asgi
from tests.wire import basic_credentials, form_of, parse_html, query_of, s256

URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
# RFC 7636 §4.1: code_verifier = 43*128unreserved.
VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")

V3 = pytest.param({"cms_api_version": 3}, id="v3")
V2 = pytest.param({}, id="v2")


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    return make_settings(**getattr(request, "param", {}))


@pytest.fixture
def cms(settings: Settings) -> Iterator[respx.MockRouter]:
    """CMS's OAuth endpoints for the configured API version; anything else reaching CMS fails."""
    oauth = f"/v{settings.cms_api_version}/o/"
    with respx.mock(base_url=settings.cms_origin, assert_all_called=False) as router:
        router.post(oauth + "token/", name="token").mock(
            side_effect=lambda request: httpx.Response(200, json=token_body())
        )
        router.post(oauth + "revoke_token/", name="revoke").mock(return_value=httpx.Response(200))
        yield router


async def start(client: httpx.AsyncClient) -> dict[str, str]:
    """GET /bluebutton/authorize as an API client; the authorize URL's query."""
    response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})
    assert response.status_code == 200, response.text
    return query_of(response.json()["authorize_url"])


async def call_back(
    client: httpx.AsyncClient, state: str | None, code: str | None = "code-1", accept: str = JSON_ACCEPT
) -> httpx.Response:
    params = {k: v for k, v in (("code", code), ("state", state)) if v is not None}
    return await client.get(CALLBACK, params=params, headers={"Accept": accept})


def diagnostics(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " | ".join(issue["diagnostics"] for issue in body["issue"])


def assert_no_bearer(request: httpx.Request) -> None:
    assert all("bearer" not in value.lower() for value in request.headers.values()), request.headers


# --- authorize -------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [V2, V3], indirect=True)
async def test_authorize_url_is_exactly_what_cms_requires(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})

        url = response.json()["authorize_url"]
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == (
            "https",
            "cms.test",
            f"/v{settings.cms_api_version}/o/authorize/",
        )
        assert parts.fragment == ""
        query = query_of(url)
        assert set(query) == {
            "response_type",
            "client_id",
            "redirect_uri",
            "state",
            "code_challenge",
            "code_challenge_method",
            "scope",
        }
        assert query["response_type"] == "code"
        assert query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == CALLBACK_URL
        assert query["code_challenge_method"] == "S256"
        assert query["scope"] == DEFAULT_SCOPES
        assert len(query["state"]) >= 32 and URL_SAFE.match(query["state"])
        # BASE64URL(SHA-256) without padding is always 43 characters.
        assert len(query["code_challenge"]) == 43 and URL_SAFE.match(query["code_challenge"])
        # Scopes are separated by %20, never '+' (bb2-api.md §2.2).
        raw_scope = next(p for p in parts.query.split("&") if p.startswith("scope="))
        assert raw_scope.count("%20") == len(DEFAULT_SCOPES.split()) - 1
        assert "+" not in parts.query
        assert CLIENT_SECRET not in url
        assert not cms.calls


async def test_authorize_uses_the_configured_scopes_and_callback() -> None:
    settings = make_settings(
        cms_scopes="openid patient/Coverage.rs", callback_url="https://app.example:8443/bb/callback"
    )
    async with open_client(settings) as client:
        query = await start(client)

    assert query["scope"] == "openid patient/Coverage.rs"
    assert query["redirect_uri"] == "https://app.example:8443/bb/callback"


async def test_authorize_never_reuses_a_state_or_a_challenge(settings: Settings) -> None:
    async with open_client(settings) as client:
        queries = [await start(client) for _ in range(25)]

        states = {q["state"] for q in queries}
        challenges = {q["code_challenge"] for q in queries}
        assert len(states) == 25
        assert len(challenges) == 25
        assert not states & challenges


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param(BROWSER_ACCEPT, id="browser"),
        pytest.param("text/html", id="text-html"),
    ],
)
async def test_browser_is_redirected_to_cms(settings: Settings, accept: str) -> None:
    async with open_client(settings) as client:
        response = await client.get(AUTHORIZE, headers={"Accept": accept})

        assert response.status_code == 307
        location = response.headers["location"]
        assert location.startswith("https://cms.test/v2/o/authorize/?")
        assert len(query_of(location)["state"]) >= 32
        assert response.headers["cache-control"] == "no-store"
        # No cookie-bound state: Swagger on 127.0.0.1 and the callback on localhost must both work.
        assert "set-cookie" not in response.headers


async def test_api_client_gets_the_url_to_open(settings: Settings) -> None:
    async with open_client(settings) as client:
        response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})

        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"authorize_url", "expires_in"}
        assert body["authorize_url"].startswith("https://cms.test/v2/o/authorize/?")
        assert body["expires_in"] == 600
        assert "set-cookie" not in response.headers


async def test_authorize_expiry_follows_the_state_ttl_setting() -> None:
    async with open_client(make_settings(state_ttl_seconds=60)) as client:
        response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})

    assert response.json()["expires_in"] == 60


# --- callback: code exchange -------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [V2, V3], indirect=True)
async def test_code_exchange_on_the_wire(cms: respx.MockRouter, settings: Settings) -> None:
    async with open_client(settings) as client:
        query = await start(client)

        response = await call_back(client, query["state"], code="the-code")

        assert response.status_code == 200, response.text
        token = cms.routes["token"]
        assert token.call_count == 1
        request = token.calls.last.request
        assert request.method == "POST"
        assert str(request.url) == f"https://cms.test/v{settings.cms_api_version}/o/token/"
        form = form_of(request)
        assert set(form) == {"grant_type", "code", "redirect_uri", "code_verifier"}
        assert form["grant_type"] == "authorization_code"
        assert form["code"] == "the-code"
        assert form["redirect_uri"] == CALLBACK_URL
        assert basic_credentials(request) == (CLIENT_ID, CLIENT_SECRET)
        assert_no_bearer(request)
        verifier = form["code_verifier"]
        assert VERIFIER.match(verifier), verifier
        assert s256(verifier) == query["code_challenge"]


async def test_callback_json_is_the_token_set(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        cms_tokens = token_body(expires_in=3600)
        cms.routes["token"].mock(return_value=httpx.Response(200, json=cms_tokens))
        query = await start(client)

        before = datetime.now(UTC)
        response = await call_back(client, query["state"])
        after = datetime.now(UTC)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {
            "access_token",
            "refresh_token",
            "token_type",
            "expires_in",
            "expires_at",
            "scope",
            "patient",
            "access_grant_expiration",
            "api_version",
        }
        assert body["api_version"] == settings.cms_api_version
        assert body["access_token"] == cms_tokens["access_token"]
        assert body["refresh_token"] == cms_tokens["refresh_token"]
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert body["scope"] == DEFAULT_SCOPES.split()
        assert body["patient"] == "-20140000008325"
        assert body["access_grant_expiration"] == "2027-07-01T12:00:00Z"
        expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        assert expires_at.tzinfo is not None
        # Absolute and computed: now + expires_in (the product rounds to whole seconds).
        slack = timedelta(seconds=1)
        assert (
            before + timedelta(seconds=3600) - slack <= expires_at <= after + timedelta(seconds=3600) + slack
        )


async def test_state_is_single_use(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        query = await start(client)
        first = await call_back(client, query["state"], code="code-a")

        second = await call_back(client, query["state"], code="code-b")

        assert first.status_code == 200
        assert second.status_code == 400
        assert "state" in diagnostics(second)
        assert cms.routes["token"].call_count == 1
        assert form_of(cms.routes["token"].calls.last.request)["code"] == "code-a"


@pytest.mark.parametrize(
    "state",
    [
        pytest.param("x" * 43, id="unknown"),
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
    ],
)
async def test_unknown_state_is_refused_without_calling_cms(
    settings: Settings, cms: respx.MockRouter, state: str | None
) -> None:
    async with open_client(settings) as client:
        await start(client)  # a real pending authorization exists, just not this one

        response = await call_back(client, state)

        assert response.status_code == 400
        assert "/bluebutton/authorize" in diagnostics(response)
        assert not cms.calls


async def test_callback_without_code_is_refused(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        query = await start(client)

        response = await call_back(client, query["state"], code=None)

        assert response.status_code == 400
        assert not cms.calls


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("ttl", "elapsed", "status"),
    [
        pytest.param(600, 599, 200, id="10min-just-in-time"),
        pytest.param(600, 601, 400, id="10min-expired"),
        pytest.param(60, 61, 400, id="ttl-setting-expired"),
    ],
)
async def test_state_expires(ttl: int, elapsed: float, status: int) -> None:
    settings = make_settings(state_ttl_seconds=ttl)
    clock = FakeClock()
    with respx.mock(base_url=settings.cms_origin, assert_all_called=False) as cms:
        token = cms.post("/v2/o/token/").mock(return_value=httpx.Response(200, json=token_body()))
        async with open_client(settings, pending=MemoryPendingStore(clock=clock)) as client:
            query = await start(client)
            clock.now += elapsed

            response = await call_back(client, query["state"])

    assert response.status_code == status, response.text
    assert token.call_count == (1 if status == 200 else 0)


async def test_concurrent_callbacks_with_one_state_exchange_once(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with open_client(settings) as client:
        held = HeldCms(lambda request: httpx.Response(200, json=token_body()))
        cms.routes["token"].mock(side_effect=held)
        query = await start(client)

        tasks = [asyncio.create_task(call_back(client, query["state"], code=f"code-{i}")) for i in range(2)]
        # Hold CMS's answer until the other callback has finished, or has reached CMS as well.
        await until(lambda: len(held.calls) >= 2 or any(t.done() for t in tasks))
        held.released.set()
        responses = await asyncio.gather(*tasks)

        assert sorted(r.status_code for r in responses) == [200, 400]
        assert len(held.calls) == 1
        assert cms.routes["token"].call_count == 1


async def test_declined_authorization_is_a_clear_403(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        query = await start(client)

        response = await client.get(CALLBACK, params={"error": "access_denied", "state": query["state"]})

        assert response.status_code == 403
        text = diagnostics(response)
        assert "declined" in text
        assert "access_denied" in text
        assert not cms.calls


@pytest.mark.parametrize(
    "with_state",
    [pytest.param(True, id="with-state"), pytest.param(False, id="without-state")],
)
async def test_other_callback_errors_are_400_with_cms_description(
    settings: Settings, cms: respx.MockRouter, with_state: bool
) -> None:
    async with open_client(settings) as client:
        params = {"error": "invalid_scope", "error_description": "The requested scope is invalid."}
        if with_state:
            params["state"] = (await start(client))["state"]

        response = await client.get(CALLBACK, params=params)

        assert response.status_code == 400
        text = diagnostics(response)
        assert "invalid_scope" in text
        assert "The requested scope is invalid." in text
        assert not cms.calls


async def test_callback_works_when_swagger_and_callback_hosts_differ(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with (
        running_asgi(settings) as app,
        client_for(app, "https://127.0.0.1:5200") as swagger,
        client_for(app, "https://localhost:5200") as browser,
    ):
        query = await start(swagger)
        response = await call_back(browser, query["state"])

    assert response.status_code == 200
    assert cms.routes["token"].call_count == 1


# --- callback: the HTML page -----------------------------------------------------------------------


async def test_browser_gets_the_token_page(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        cms_tokens = token_body()
        cms.routes["token"].mock(return_value=httpx.Response(200, json=cms_tokens))
        query = await start(client)

        response = await call_back(client, query["state"], accept=BROWSER_ACCEPT)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        page = parse_html(response.text)
        assert cms_tokens["patient"] in response.text
        for scope in DEFAULT_SCOPES.split():
            assert scope in page.by_id["scopes"].text
        json_expiry = (datetime.now(UTC) + timedelta(seconds=3600)).strftime("%Y-%m-%dT%H")
        assert page.by_id["expires-at"].text.startswith(json_expiry)
        assert page.by_id["access-token"].text == cms_tokens["access_token"]
        assert page.by_id["copy"].tag == "button"
        assert "/docs" in page.links
        assert "demographics-warning" not in page.by_id


@pytest.mark.parametrize(
    ("scope", "warned"),
    [
        pytest.param(DEFAULT_SCOPES, False, id="all-granted"),
        pytest.param(
            "openid patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.rs",
            False,
            id="v3-style-patient-scope",
        ),
        pytest.param(
            "openid patient/Coverage.read patient/ExplanationOfBenefit.read", True, id="demographics-declined"
        ),
        pytest.param("", True, id="no-scope"),
    ],
)
async def test_demographics_warning(
    settings: Settings, cms: respx.MockRouter, scope: str, warned: bool
) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(return_value=httpx.Response(200, json=token_body(scope=scope)))
        query = await start(client)

        response = await call_back(client, query["state"], accept=BROWSER_ACCEPT)

        page = parse_html(response.text)
        assert ("demographics-warning" in page.by_id) is warned
        if warned:
            assert "403" in page.by_id["demographics-warning"].text


async def test_token_page_escapes_what_cms_sent(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        hostile = '"><script>alert(1)</script>&'
        cms_tokens = token_body(
            access_token="tok" + hostile,
            refresh_token="ref" + hostile,
            patient="pat" + hostile,
            scope="openid <b>bold</b>",
        )
        cms.routes["token"].mock(return_value=httpx.Response(200, json=cms_tokens))
        query = await start(client)

        response = await call_back(client, query["state"], accept=BROWSER_ACCEPT)

        assert response.status_code == 200
        assert "<script>alert(1)</script>" not in response.text
        assert "<b>bold</b>" not in response.text
        assert str(markupsafe.escape(hostile)) in response.text  # Jinja2 autoescape (&#34; for ")
        page = parse_html(response.text)
        assert page.by_id["access-token"].text == cms_tokens["access_token"]
        assert page.by_id["patient"].text == cms_tokens["patient"]
        assert "<b>bold</b>" in page.by_id["scopes"].text


# --- callback: CMS refuses the exchange -------------------------------------------------------------

TIMED_OUT = (
    "User access has timed out. To refresh Medicare data, end user must re-authenticate "
    "and consent to share their data."
)
ONE_TIME = (
    "Your application is not allowed to refresh tokens. To refresh Medicare data, end user must "
    "re-authenticate and consent to share their data."
)


@pytest.mark.parametrize(
    ("status", "cms_body", "advice"),
    [
        pytest.param(
            400,
            {"error": "invalid_grant", "error_description": "Invalid code."},
            "GET /bluebutton/authorize",
            id="invalid_grant-400",
        ),
        pytest.param(
            401, {"error": "invalid_client"}, "BLUEBUTTON_CMS_CLIENT_SECRET", id="invalid_client-401"
        ),
        pytest.param(
            401,
            {"error": "invalid_grant", "error_description": TIMED_OUT},
            "GET /bluebutton/authorize",
            id="grant-timed-out-401",
        ),
        pytest.param(
            403,
            {"status_code": 403, "error": "invalid_client", "error_description": ONE_TIME},
            "GET /bluebutton/authorize",
            id="one-time-grant-403",
        ),
    ],
)
async def test_cms_token_errors_are_502_with_cms_reason_and_advice(
    settings: Settings, cms: respx.MockRouter, status: int, cms_body: dict[str, Any], advice: str
) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(return_value=httpx.Response(status, json=cms_body))
        query = await start(client)

        response = await call_back(client, query["state"], code="bad-code")

        assert response.status_code == 502
        text = diagnostics(response)
        assert cms_body["error"] in text
        if "error_description" in cms_body:
            assert cms_body["error_description"] in text
        assert advice in text
        assert "bad-code" not in response.text
        assert cms.routes["token"].call_count == 1


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.Response(503, text="busy"), id="cms-503"),
        pytest.param(httpx.ConnectError("refused"), id="connect-error"),
        pytest.param(httpx.ReadTimeout("slow"), id="read-timeout"),
    ],
)
async def test_code_exchange_is_never_retried(
    settings: Settings, cms: respx.MockRouter, failure: httpx.Response | Exception
) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(side_effect=[failure, httpx.Response(200, json=token_body())])
        query = await start(client)

        response = await call_back(client, query["state"])

        assert response.status_code == 502
        assert "/bluebutton/authorize" in diagnostics(response)
        assert cms.routes["token"].call_count == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(httpx.Response(200, text="<html>maintenance</html>"), id="not-json"),
        pytest.param(httpx.Response(200, json={"token_type": "Bearer"}), id="no-access-token"),
    ],
)
async def test_unusable_token_answer_is_502(
    settings: Settings, cms: respx.MockRouter, answer: httpx.Response
) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(return_value=answer)
        query = await start(client)

        response = await call_back(client, query["state"])

        assert response.status_code == 502


# --- refresh -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [V2, V3], indirect=True)
async def test_refresh_on_the_wire(cms: respx.MockRouter, settings: Settings) -> None:
    async with open_client(settings) as client:
        new = token_body(refresh_token="rotated-refresh")
        cms.routes["token"].mock(return_value=httpx.Response(200, json=new))

        response = await client.post(REFRESH, json={"refresh_token": "old-refresh"})

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["access_token"] == new["access_token"]
        assert body["refresh_token"] == "rotated-refresh"
        assert body["scope"] == DEFAULT_SCOPES.split()
        assert body["patient"] == new["patient"]
        assert {"expires_at", "expires_in", "token_type", "access_grant_expiration"} <= set(body)
        request = cms.routes["token"].calls.last.request
        assert str(request.url) == f"https://cms.test/v{settings.cms_api_version}/o/token/"
        assert form_of(request) == {"grant_type": "refresh_token", "refresh_token": "old-refresh"}
        assert basic_credentials(request) == (CLIENT_ID, CLIENT_SECRET)
        assert_no_bearer(request)


@pytest.mark.parametrize(
    ("status", "cms_body", "cms_reason"),
    [
        pytest.param(400, {"error": "invalid_grant"}, "invalid_grant", id="reused-400"),
        pytest.param(
            401,
            {"error": "invalid_grant", "error_description": TIMED_OUT},
            TIMED_OUT,
            id="grant-timed-out-401",
        ),
        pytest.param(
            400,
            {"status_code": 400, "error": "invalid_request", "error_description": "Refresh token not found."},
            "Refresh token not found.",
            id="not-found-400",
        ),
        pytest.param(
            403,
            {
                "error": "invalid_grant",
                "error_description": "User access cannot be found. To refresh Medicare data, end user "
                "must re-authenticate and consent to share their data.",
            },
            "User access cannot be found.",
            id="grant-revoked-403",
        ),
        pytest.param(
            403,
            {"status_code": 403, "error": "invalid_client", "error_description": ONE_TIME},
            ONE_TIME,
            id="one-time-403",
        ),
    ],
)
async def test_rejected_refresh_token_is_401_with_reason_and_advice(
    settings: Settings, cms: respx.MockRouter, status: int, cms_body: dict[str, Any], cms_reason: str
) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(return_value=httpx.Response(status, json=cms_body))

        response = await client.post(REFRESH, json={"refresh_token": "spent-refresh"})

        assert response.status_code == 401
        text = diagnostics(response)
        assert cms_reason in text
        assert "single-use" in text
        assert "13-month" in text
        assert "/bluebutton/authorize" in text
        assert "spent-refresh" not in response.text
        assert cms.routes["token"].call_count == 1


async def test_refresh_with_bad_client_credentials_is_502(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(return_value=httpx.Response(401, json={"error": "invalid_client"}))

        response = await client.post(REFRESH, json={"refresh_token": "r"})

        assert response.status_code == 502
        text = diagnostics(response)
        assert "invalid_client" in text
        assert "BLUEBUTTON_CMS_CLIENT_ID" in text


async def test_refreshing_a_used_token_again_reaches_cms_and_says_so(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with open_client(settings) as client:
        cms.routes["token"].mock(
            side_effect=[
                httpx.Response(200, json=token_body()),
                httpx.Response(400, json={"error": "invalid_grant"}),
            ]
        )

        first = await client.post(REFRESH, json={"refresh_token": "once"})
        second = await client.post(REFRESH, json={"refresh_token": "once"})

        assert first.status_code == 200
        assert second.status_code == 401
        assert "single-use" in diagnostics(second)
        assert cms.routes["token"].call_count == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing"),
        pytest.param({"refresh_token": ""}, id="empty"),
        pytest.param({"refresh_token": 42}, id="not-a-string"),
    ],
)
async def test_refresh_body_is_validated(
    settings: Settings, cms: respx.MockRouter, body: dict[str, Any]
) -> None:
    async with open_client(settings) as client:
        response = await client.post(REFRESH, json=body)

        assert response.status_code == 422
        assert response.json()["issue"][0]["expression"] == ["refresh_token"]
        assert not cms.calls


def _refresh_tasks(client: httpx.AsyncClient, *tokens: str) -> list[asyncio.Task[httpx.Response]]:
    return [asyncio.create_task(client.post(REFRESH, json={"refresh_token": t})) for t in tokens]


def _in_refresh(task: asyncio.Task[Any]) -> bool:
    return inside(task, "refresh", "bluebutton/oauth.py")


async def test_concurrent_refreshes_of_one_token_share_one_cms_call(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with open_client(settings) as client:
        new = token_body()
        held = HeldCms(lambda request: httpx.Response(200, json=new))
        cms.routes["token"].mock(side_effect=held)

        tasks = _refresh_tasks(client, "same-token", "same-token")
        # Release CMS only once both requests are inside OAuthClient.refresh (or both reached CMS).
        await until(lambda: len(held.calls) >= 2 or (len(held.calls) == 1 and all(map(_in_refresh, tasks))))
        held.released.set()
        first, second = await asyncio.gather(*tasks)

        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert first.json()["access_token"] == new["access_token"]
        assert first.json()["refresh_token"] == new["refresh_token"]
        assert len(held.calls) == 1
        assert form_of(held.calls[0])["refresh_token"] == "same-token"


async def test_concurrent_refreshes_of_one_token_share_cms_refusal(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with open_client(settings) as client:
        held = HeldCms(lambda request: httpx.Response(400, json={"error": "invalid_grant"}))
        cms.routes["token"].mock(side_effect=held)

        tasks = _refresh_tasks(client, "same-token", "same-token")
        await until(lambda: len(held.calls) >= 2 or (len(held.calls) == 1 and all(map(_in_refresh, tasks))))
        held.released.set()
        responses = await asyncio.gather(*tasks)

        assert [r.status_code for r in responses] == [401, 401]
        assert len(held.calls) == 1


async def test_concurrent_refreshes_of_different_tokens_are_separate_calls(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with open_client(settings) as client:

        def answer(request: httpx.Request) -> httpx.Response:
            old = form_of(request)["refresh_token"]
            return httpx.Response(200, json=token_body(access_token=f"access-for-{old}"))

        held = HeldCms(answer)
        cms.routes["token"].mock(side_effect=held)

        tasks = _refresh_tasks(client, "token-a", "token-b")
        await until(lambda: len(held.calls) >= 2)
        held.released.set()
        a, b = await asyncio.gather(*tasks)

        assert a.json()["access_token"] == "access-for-token-a"
        assert b.json()["access_token"] == "access-for-token-b"
        assert sorted(form_of(r)["refresh_token"] for r in held.calls) == ["token-a", "token-b"]


# --- revoke ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [V2, V3], indirect=True)
async def test_revoke_on_the_wire(cms: respx.MockRouter, settings: Settings) -> None:
    async with open_client(settings) as client:
        response = await client.post(REVOKE, json={"token": "token-to-revoke"})

        assert response.status_code == 204
        assert response.content == b""
        revoke = cms.routes["revoke"]
        assert revoke.call_count == 1
        request = revoke.calls.last.request
        assert request.method == "POST"
        assert str(request.url) == f"https://cms.test/v{settings.cms_api_version}/o/revoke_token/"
        assert form_of(request) == {"token": "token-to-revoke"}
        assert basic_credentials(request) == (CLIENT_ID, CLIENT_SECRET)
        assert_no_bearer(request)
        assert not cms.routes["token"].called


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.Response(403, json={"detail": "not your token"}), id="cms-403"),
        pytest.param(httpx.Response(401, json={"error": "invalid_client"}), id="cms-401"),
        pytest.param(httpx.Response(500, text="oops"), id="cms-500"),
        pytest.param(httpx.Response(301, headers={"Location": "/v2/o/revoke_token/"}), id="redirect"),
        pytest.param(httpx.ConnectError("refused"), id="connect-error"),
    ],
)
async def test_revoke_refused_by_cms_is_502(
    settings: Settings, cms: respx.MockRouter, failure: httpx.Response | Exception
) -> None:
    async with open_client(settings) as client:
        cms.routes["revoke"].mock(side_effect=[failure])

        response = await client.post(REVOKE, json={"token": "t"})

        assert response.status_code == 502
        assert response.json()["resourceType"] == "OperationOutcome"


async def test_revoke_body_is_validated(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        response = await client.post(REVOKE, json={"refresh_token": "wrong-field"})

        assert response.status_code == 422
        assert not cms.calls


# --- missing client credentials ---------------------------------------------------------------------

MISSING = [
    pytest.param({"cms_client_id": None}, ["BLUEBUTTON_CMS_CLIENT_ID"], id="no-id"),
    pytest.param({"cms_client_secret": None}, ["BLUEBUTTON_CMS_CLIENT_SECRET"], id="no-secret"),
    pytest.param(
        {"cms_client_id": None, "cms_client_secret": None},
        ["BLUEBUTTON_CMS_CLIENT_ID", "BLUEBUTTON_CMS_CLIENT_SECRET"],
        id="neither",
    ),
    pytest.param(
        {"cms_client_id": "", "cms_client_secret": ""},
        ["BLUEBUTTON_CMS_CLIENT_ID", "BLUEBUTTON_CMS_CLIENT_SECRET"],
        id="empty",
    ),
]

ENDPOINTS = [
    pytest.param("GET", AUTHORIZE, {"headers": {"Accept": BROWSER_ACCEPT}}, id="authorize-browser"),
    pytest.param("GET", AUTHORIZE, {"headers": {"Accept": JSON_ACCEPT}}, id="authorize-json"),
    pytest.param("GET", CALLBACK, {"params": {"code": "c", "state": "s" * 43}}, id="callback"),
    pytest.param("POST", REFRESH, {"json": {"refresh_token": "r"}}, id="refresh"),
    pytest.param("POST", REVOKE, {"json": {"token": "t"}}, id="revoke"),
]


@pytest.mark.parametrize(("missing", "names"), MISSING)
@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS)
async def test_oauth_endpoints_answer_503_naming_missing_credentials(
    missing: dict[str, Any], names: list[str], method: str, path: str, kwargs: dict[str, Any]
) -> None:
    settings = make_settings(**missing)
    with respx.mock(base_url=settings.cms_origin) as cms:
        async with open_client(settings) as client:
            response = await client.request(method, path, **kwargs)

    assert response.status_code == 503, response.text
    if response.headers["content-type"].startswith("text/html"):  # a browser gets the error page
        text = parse_html(response.text).by_id["reasons"].text
    else:
        text = diagnostics(response)
    for name in ["BLUEBUTTON_CMS_CLIENT_ID", "BLUEBUTTON_CMS_CLIENT_SECRET"]:
        assert (name in text) is (name in names), text
    assert not cms.calls


async def test_rest_of_the_api_works_without_credentials() -> None:
    settings = make_settings(cms_client_id=None, cms_client_secret=None)
    with respx.mock(base_url=settings.cms_origin) as cms:
        async with open_client(settings) as client:
            health = await client.get("/health")
            bad_query = await client.get(
                "/bluebutton/fhir",
                params={"resource_type": "Observation"},
                headers={"Authorization": "Bearer some-token"},
            )
            no_token = await client.get("/bluebutton/fhir", params={"resource_type": "Coverage"})

    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert bad_query.status_code == 422
    assert bad_query.json()["issue"][0]["expression"] == ["resource_type"]
    assert no_token.status_code == 401
    assert not cms.calls


# --- secrets stay secret -----------------------------------------------------------------------------


def _leaks(secret: str, response: httpx.Response) -> bool:
    in_headers = any(secret in value for value in response.headers.values())
    return secret in response.text or in_headers or secret in str(response.url)


async def test_pkce_verifier_never_leaves_the_server(settings: Settings, cms: respx.MockRouter) -> None:
    async with open_client(settings) as client:
        responses: list[httpx.Response] = []
        authorize_urls: list[str] = []
        for authorize_accept, callback_accept in [
            (JSON_ACCEPT, BROWSER_ACCEPT),
            (BROWSER_ACCEPT, JSON_ACCEPT),
        ]:
            authorized = await client.get(AUTHORIZE, headers={"Accept": authorize_accept})
            url = authorized.headers.get("location") or authorized.json()["authorize_url"]
            authorize_urls.append(url)
            state = query_of(url)["state"]
            responses += [authorized, await call_back(client, state, accept=callback_accept)]
            responses.append(await call_back(client, state, accept=callback_accept))  # replay: 400
        cms.routes["token"].mock(return_value=httpx.Response(400, json={"error": "invalid_grant"}))
        state = (await start(client))["state"]
        responses.append(await call_back(client, state))  # CMS refused: 502

        verifiers = [form_of(call.request)["code_verifier"] for call in cms.routes["token"].calls]
        assert len(verifiers) == 3
        assert [r.status_code for r in responses] == [200, 200, 400, 307, 200, 400, 502]
        for verifier in verifiers:
            assert all(verifier not in url for url in authorize_urls)
            assert not any(_leaks(verifier, r) for r in responses)


async def test_no_token_code_verifier_or_secret_in_logs(
    settings: Settings, cms: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = "http://service.test"
    first, second = token_body(), token_body()
    cms.routes["token"].mock(
        side_effect=[
            httpx.Response(200, json=first),  # code exchange
            httpx.Response(400, json={"error": "invalid_grant", "error_description": "Invalid code."}),
            httpx.Response(200, json=second),  # refresh
            httpx.Response(400, json={"error": "invalid_grant"}),  # refresh token reused
        ]
    )
    cms.routes["revoke"].mock(side_effect=[httpx.Response(200), httpx.Response(500, text="oops")])
    responses: list[httpx.Response] = []
    async with open_client(settings, base_url=service) as client:
        state = (await start(client))["state"]
        responses.append(await client.get(AUTHORIZE, headers={"Accept": BROWSER_ACCEPT}))
        responses.append(await call_back(client, state, code="code-good-1", accept=BROWSER_ACCEPT))
        responses.append(await call_back(client, state, code="code-good-1"))  # replay
        state = (await start(client))["state"]
        responses.append(await call_back(client, state, code="code-bad-2"))
        state = (await start(client))["state"]
        responses.append(await client.get(CALLBACK, params={"error": "access_denied", "state": state}))
        responses.append(await client.post(REFRESH, json={"refresh_token": first["refresh_token"]}))
        responses.append(await client.post(REFRESH, json={"refresh_token": first["refresh_token"]}))
        responses.append(await client.post(REVOKE, json={"token": second["access_token"]}))
        responses.append(await client.post(REVOKE, json={"token": second["refresh_token"]}))

    assert [r.status_code for r in responses] == [307, 200, 400, 502, 403, 200, 401, 204, 502]
    exchanges = [
        call.request for call in cms.routes["token"].calls if "code_verifier" in form_of(call.request)
    ]
    secrets = {
        "access token": [first["access_token"], second["access_token"]],
        "refresh token": [first["refresh_token"], second["refresh_token"]],
        "authorization code": ["code-good-1", "code-bad-2"],
        "PKCE verifier": [form_of(r)["code_verifier"] for r in exchanges],
        "client secret": [CLIENT_SECRET, base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()],
    }
    assert len(secrets["PKCE verifier"]) == 2

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    # httpx logs the test client's own requests (their URLs hold codes); those are not the service's logs.
    service_records = [
        record for record in caplog.records if not (record.name == "httpx" and service in record.getMessage())
    ]
    logged = "\n".join(formatter.format(record) for record in service_records)
    assert "https://cms.test/v2/o/token/" in logged  # library logs (httpx at INFO) are captured too
    for kind, values in secrets.items():
        for value in values:
            assert value not in logged, f"{kind} appears in the logs"

    access_lines = [r.getMessage() for r in service_records if r.name == "bluebutton.access"]
    for response in responses:
        request_id = response.headers["x-request-id"]
        lines = [line for line in access_lines if line.endswith(f"id={request_id}")]
        assert len(lines) == 1, (request_id, access_lines)
        method, path, status = lines[0].split()[:3]
        assert (method, path, int(status)) == (
            response.request.method,
            response.request.url.path,
            response.status_code,
        )
        assert "?" not in lines[0]
