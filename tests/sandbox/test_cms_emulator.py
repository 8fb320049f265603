"""The CMS Blue Button 2.0 emulator (bluebutton.sandbox.cms) against bb2-api.md, in-process.

OAuth (authorize checks, login/consent, PKCE, refresh rotation, revocation, userinfo), FHIR (paging,
filters, own-patient rules, demographics withheld, token failures), faults and the admin endpoints.
Data generation is in test_cms_data.py, real sockets and the command line in test_cms_socket.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from starlette.applications import Starlette

from bluebutton.sandbox.cms.app import create_cms_app
from bluebutton.sandbox.cms.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REDIRECT_URI,
    CmsSandboxConfig,
)
from bluebutton.sandbox.cms.data import generate_claims
from bluebutton.sandbox.cms.faults import ConnectionDropped, Faults

CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
REDIRECT = DEFAULT_REDIRECT_URI
STATE = "state-0123456789abcdef"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def s256(verifier: str) -> str:
    """RFC 7636 §4.2, computed here independently of the emulator."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def query_of(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


class Cms:
    """One emulator app plus a client bound to it."""

    def __init__(self, app: Starlette, client: httpx.AsyncClient, clock: FakeClock) -> None:
        self.app = app
        self.client = client
        self.clock = clock

    def authorize_params(self, **overrides: str | None) -> dict[str, str]:
        self.verifier = secrets.token_urlsafe(48)
        params: dict[str, str | None] = {
            "client_id": DEFAULT_CLIENT_ID,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "state": STATE,
            "code_challenge": s256(self.verifier),
            "code_challenge_method": "S256",
            **overrides,
        }
        return {k: v for k, v in params.items() if v is not None}

    async def consent_url(self, user: int = 0, **overrides: str | None) -> str:
        """Authorize and log in; the URL of the consent page."""
        response = await self.client.get("/v2/o/authorize/", params=self.authorize_params(**overrides))
        assert response.status_code == 302, response.text
        pending = response.headers["location"]
        login = await self.client.post(
            pending, data={"username": f"BBUser{user:05d}", "password": f"PW{user:05d}!"}
        )
        assert login.status_code == 303 and login.headers["location"] == pending
        return pending

    async def code(self, user: int = 0, *, share: bool = True, **overrides: str | None) -> str:
        pending = await self.consent_url(user, **overrides)
        decision = {"allow": "true", "share_demographics": "yes" if share else "no"}
        response = await self.client.post(pending, data=decision)
        assert response.status_code == 302
        callback = query_of(response.headers["location"])
        assert callback["state"] == STATE
        return callback["code"]

    async def exchange(self, code: str, **form: str) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": self.verifier,
            **form,
        }
        return await self.client.post("/v2/o/token/", data=data, auth=CLIENT)

    async def login(self, user: int = 0, *, share: bool = True, **overrides: str | None) -> dict[str, Any]:
        """The whole flow; the token response."""
        response = await self.exchange(await self.code(user, share=share, **overrides))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def refresh(self, refresh_token: str, **form: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}
        return await self.client.post("/v2/o/token/", data=data, auth=CLIENT)

    async def fhir(self, path: str, token: str | None, params: Any = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        url = path if path.startswith("http") else f"/v2/fhir/{path}"
        return await self.client.get(url, params=params, headers=headers)

    async def put_faults(self, **faults: Any) -> None:
        response = await self.client.put("/_sandbox/faults", json=faults)
        assert response.status_code == 200, response.text


@asynccontextmanager
async def open_cms(clock: FakeClock | None = None, **config: Any) -> AsyncIterator[Cms]:
    clock = clock or FakeClock()
    app = create_cms_app(CmsSandboxConfig(clock=clock, **config))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Cms(app, client, clock)


def entry_ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def find_link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((str(x["url"]) for x in bundle["link"] if x["relation"] == relation), None)


def link(bundle: dict[str, Any], relation: str) -> str:
    """The URL of a link that must be there."""
    url = find_link(bundle, relation)
    assert url is not None, f"no {relation!r} link in {bundle['link']}"
    return url


def pending_id(url: str) -> str:
    match = re.search(r"/v2/o/authorize/([0-9a-f-]{36})/$", url)
    assert match, url
    return match.group(1)


# ------------------------------------------------------------------------------------ authorize


AUTHORIZE_ERRORS = [
    pytest.param(
        {"client_id": None},
        400,
        {"status_code": 400, "error": "invalid_client", "error_description": "Missing Client ID"},
        id="no-client-id",
    ),
    pytest.param(
        {"client_id": "someone-else"},
        400,
        {"status_code": 400, "error": "invalid_client", "error_description": "Application does not exist"},
        id="unknown-client-id",
    ),
    pytest.param(
        {"code_challenge": None},
        400,
        {"status_code": 400, "message": "Missing Required Parameter(s): code_challenge"},
        id="no-code-challenge",
    ),
    pytest.param(
        {"code_challenge": None, "code_challenge_method": None, "state": None},
        400,
        {
            "status_code": 400,
            "message": "Missing Required Parameter(s): code_challenge, code_challenge_method, state",
        },
        id="no-pkce-no-state",
    ),
    pytest.param(
        {"state": "1"},
        400,
        {"status_code": 400, "message": "State parameter should have a minimum of 16 characters"},
        id="short-state",
    ),
    pytest.param(
        {"code_challenge_method": "plain"},
        400,
        {
            "status_code": 400,
            "error": "invalid_request",
            "error_description": "code_challenge_method must be S256",
        },
        id="plain-pkce",
    ),
    pytest.param(
        {"scope": "launch/everything"},
        400,
        {"status_code": 400, "message": "Invalid scopes."},
        id="no-known-scope",
    ),
]


@pytest.mark.parametrize(("overrides", "status", "body"), AUTHORIZE_ERRORS)
async def test_authorize_rejects_what_cms_rejects(overrides, status, body):
    async with open_cms() as cms:
        response = await cms.client.get("/v2/o/authorize/", params=cms.authorize_params(**overrides))
    assert response.status_code == status
    assert response.json() == body
    assert "location" not in response.headers


async def test_authorize_refuses_client_secret_in_the_query():
    async with open_cms() as cms:
        params = cms.authorize_params(client_secret=DEFAULT_CLIENT_SECRET)
        response = await cms.client.get("/v2/o/authorize/", params=params)
    assert response.status_code == 400
    assert response.text == "Illegal query parameter [client_secret] detected"


@pytest.mark.parametrize("redirect_uri", ["https://evil.example.com/cb", REDIRECT + "/x"])
async def test_authorize_never_redirects_to_an_unregistered_uri(redirect_uri):
    async with open_cms() as cms:
        response = await cms.client.get(
            "/v2/o/authorize/", params=cms.authorize_params(redirect_uri=redirect_uri)
        )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "Mismatching redirect URI." in response.text


@pytest.mark.parametrize(
    ("response_type", "error"), [("token", "unsupported_response_type"), (None, "invalid_request")]
)
async def test_authorize_redirects_response_type_errors_with_state(response_type, error):
    async with open_cms() as cms:
        params = cms.authorize_params(response_type=response_type)
        response = await cms.client.get("/v2/o/authorize/", params=params)
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT + "?")
    assert query_of(response.headers["location"])["error"] == error
    assert query_of(response.headers["location"])["state"] == STATE


async def test_authorize_without_slash_redirects_like_django():
    async with open_cms() as cms:
        response = await cms.client.get("/v2/o/authorize", params=cms.authorize_params())
    assert response.status_code == 301
    assert urlsplit(response.headers["location"]).path == "/v2/o/authorize/"


async def test_login_and_consent_pages_are_plain_forms():
    async with open_cms() as cms:
        first = await cms.client.get("/v2/o/authorize/", params=cms.authorize_params())
        pending = first.headers["location"]
        page = await cms.client.get(pending)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for element in (
            'id="username" name="username"',
            'id="password" name="password"',
            'id="login"',
            'method="post"',
            f'action="{pending}"',
        ):
            assert element in page.text
        assert "<script" not in page.text

        wrong = await cms.client.post(pending, data={"username": "BBUser00042", "password": "PW00041!"})
        assert wrong.status_code == 200 and "Invalid username or password." in wrong.text
        assert 'id="username"' in wrong.text
        for bad_user in ("BBUser42", "bbuser", ""):
            again = await cms.client.post(pending, data={"username": bad_user, "password": "PW00042!"})
            assert "Invalid username or password." in again.text

        ok = await cms.client.post(pending, data={"username": "BBUser00042", "password": "PW00042!"})
        assert ok.status_code == 303
        consent = await cms.client.get(pending)
        for element in (
            'id="allow"',
            'id="deny"',
            'id="share-all"',
            'id="share-no-demographics"',
            'name="share_demographics"',
            "Share all of your data",
            "BBUser00042",
        ):
            assert element in consent.text


async def test_full_flow_issues_cms_shaped_tokens():
    async with open_cms() as cms:
        code = await cms.code(42)
        response = await cms.exchange(code)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert list(body) == [
            "access_token",
            "expires_in",
            "token_type",
            "scope",
            "refresh_token",
            "patient",
            "access_grant_expiration",
        ]
        assert body["expires_in"] == 3600 and body["token_type"] == "Bearer"
        assert body["patient"] == "-19990000000043"
        assert set(body["scope"].split()) >= {
            "patient/ExplanationOfBenefit.read",
            "profile",
            "patient/Patient.read",
            "patient/Coverage.read",
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["access_grant_expiration"])
        assert len(body["access_token"]) >= 20 and body["access_token"] != body["refresh_token"]

        reused = await cms.exchange(code)
        assert (reused.status_code, reused.json()) == (400, {"error": "invalid_grant"})
        patient = await cms.fhir("Patient", body["access_token"])
        assert entry_ids(patient.json()) == ["-19990000000043"]


async def test_requested_scopes_are_granted_and_condensed():
    async with open_cms() as cms:
        scope = (
            "patient/ExplanationOfBenefit.r patient/ExplanationOfBenefit.s "
            "patient/Coverage.read unknown/scope"
        )
        body = await cms.login(scope=scope)
        assert body["scope"] == "patient/Coverage.read patient/ExplanationOfBenefit.rs"
        token = body["access_token"]
        assert (await cms.fhir("ExplanationOfBenefit", token)).status_code == 200
        assert (await cms.fhir("Patient", token)).status_code == 403
        assert (
            await cms.client.get("/v2/connect/userinfo", headers={"Authorization": f"Bearer {token}"})
        ).status_code == 403


async def test_deny_redirects_access_denied_with_state():
    async with open_cms() as cms:
        pending = await cms.consent_url(7)
        response = await cms.client.post(pending, data={"allow": "false"})
        assert response.status_code == 302
        assert query_of(response.headers["location"]) == {"error": "access_denied", "state": STATE}
        gone = await cms.client.get(pending)
        assert gone.status_code == 404


async def test_pending_authorization_expires_after_600_seconds():
    async with open_cms() as cms:
        pending = await cms.consent_url(1)
        cms.clock.advance(601)
        response = await cms.client.post(pending, data={"allow": "true"})
        assert response.status_code == 404
        assert response.json() == {"status_code": 404, "message": "Not found."}


# ----------------------------------------------------------------------------------- token


@pytest.mark.parametrize(
    ("verifier", "description"),
    [
        ("x" * 42, "code_verifier min length is 43"),
        ("x" * 129, "code_verifier max length is 128"),
        ("x" * 60, "code_challenge does not match"),
    ],
)
async def test_token_checks_the_pkce_verifier(verifier, description):
    async with open_cms() as cms:
        code = await cms.code()
        response = await cms.exchange(code, code_verifier=verifier)
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_request", "error_description": description}
        assert (await cms.exchange(code)).status_code == 200  # a failed check leaves the code usable


async def test_token_needs_a_verifier_and_the_same_redirect_uri():
    async with open_cms() as cms:
        code = await cms.code()
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        missing = await cms.client.post("/v2/o/token/", data=data, auth=CLIENT)
        assert missing.json()["error_description"] == "code_verifier required for this request"
        other = await cms.exchange(code, redirect_uri="https://localhost:5200/other")
        assert other.status_code == 400
        assert other.json() == {"error": "invalid_request", "error_description": "Mismatching redirect URI."}


async def test_code_expires_after_60_seconds():
    async with open_cms() as cms:
        code = await cms.code()
        cms.clock.advance(61)
        response = await cms.exchange(code)
        assert (response.status_code, response.json()) == (400, {"error": "invalid_grant"})


async def test_token_accepts_form_credentials_and_multipart():
    async with open_cms() as cms:
        code = await cms.code()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": cms.verifier,
            "client_id": CLIENT[0],
            "client_secret": CLIENT[1],
        }
        # PYSDK posts multipart/form-data to the slash-less URL (bb2-api.md §2.4)
        response = await cms.client.post("/v2/o/token", files={k: (None, v) for k, v in data.items()})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("auth", [("bluebutton-sandbox-client", "wrong"), ("nobody", "x"), None])
async def test_token_rejects_bad_client_credentials(auth):
    async with open_cms() as cms:
        code = await cms.code()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": cms.verifier,
        }
        response = await cms.client.post("/v2/o/token/", data=data, auth=auth)
        assert (response.status_code, response.json()) == (401, {"error": "invalid_client"})


async def test_bearer_header_on_token_endpoints_is_a_json_error_not_a_500():
    async with open_cms() as cms:
        tokens = await cms.login()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        for path in ("/v2/o/token/", "/v2/o/revoke_token/"):
            response = await cms.client.post(
                path,
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "token": "x"},
                headers=headers,
            )
            assert response.status_code == 401
            assert response.json()["error"] == "invalid_client"


async def test_unsupported_grant_type():
    async with open_cms() as cms:
        response = await cms.client.post("/v2/o/token/", data={"grant_type": "password"}, auth=CLIENT)
        assert (response.status_code, response.json()) == (400, {"error": "unsupported_grant_type"})


async def test_refresh_rotates_single_use_tokens():
    async with open_cms() as cms:
        first = await cms.login(3)
        response = await cms.refresh(first["refresh_token"])
        assert response.status_code == 200
        second = response.json()
        assert second["patient"] == "-19990000000004" and second["expires_in"] == 3600
        assert second["access_token"] != first["access_token"]
        assert second["refresh_token"] != first["refresh_token"]
        # the old access token died with the refresh (DOT), the new one works
        assert (await cms.fhir("Coverage", first["access_token"])).status_code == 401
        assert (await cms.fhir("Coverage", second["access_token"])).status_code == 200
        reused = await cms.refresh(first["refresh_token"])
        assert (reused.status_code, reused.json()) == (400, {"error": "invalid_grant"})
        assert (await cms.refresh(second["refresh_token"])).status_code == 200


async def test_refresh_errors():
    async with open_cms() as cms:
        tokens = await cms.login()
        missing = await cms.client.post("/v2/o/token/", data={"grant_type": "refresh_token"}, auth=CLIENT)
        assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
        unknown = await cms.refresh("not-a-token")
        assert unknown.status_code == 400
        assert unknown.json()["error_description"] == "Refresh token not found."
        wider = await cms.refresh(tokens["refresh_token"], scope="patient/AuditEvent.rs")
        assert (wider.status_code, wider.json()) == (400, {"error": "invalid_scope"})
        narrower = await cms.refresh(tokens["refresh_token"], scope="patient/Coverage.r")
        assert narrower.json()["scope"] == "patient/Coverage.r"
        assert (
            await cms.fhir("Coverage/part-a--19990000000001", narrower.json()["access_token"])
        ).status_code == 200
        assert (await cms.fhir("Coverage", narrower.json()["access_token"])).status_code == 403


async def test_reauthorizing_deletes_the_earlier_tokens():
    async with open_cms() as cms:
        old = await cms.login(5)
        new = await cms.login(5)
        assert (await cms.fhir("Coverage", old["access_token"])).status_code == 401
        gone = await cms.refresh(old["refresh_token"])
        assert gone.json()["error_description"] == "Refresh token not found."
        assert (await cms.fhir("Coverage", new["access_token"])).status_code == 200


async def test_access_token_expires_after_its_lifetime():
    async with open_cms(access_token_seconds=120) as cms:
        tokens = await cms.login()
        assert tokens["expires_in"] == 120
        cms.clock.advance(121)
        response = await cms.fhir("Patient", tokens["access_token"])
        assert response.status_code == 401
        assert response.json() == {"detail": "Authentication credentials were not provided."}
        assert 'error_description="The access token has expired."' in response.headers["www-authenticate"]
        assert (await cms.refresh(tokens["refresh_token"])).status_code == 200


async def test_revoke_token_rfc7009():
    async with open_cms() as cms:
        tokens = await cms.login()
        revoke = {"token": tokens["access_token"]}
        response = await cms.client.post("/v2/o/revoke_token/", data=revoke, auth=CLIENT)
        assert (response.status_code, response.content) == (200, b"")
        assert (await cms.fhir("Patient", tokens["access_token"])).status_code == 401
        refreshed = (await cms.refresh(tokens["refresh_token"])).json()  # the refresh token lives on

        form = {"token": refreshed["refresh_token"], "client_id": CLIENT[0], "client_secret": CLIENT[1]}
        assert (await cms.client.post("/v2/o/revoke_token/", data=form)).status_code == 200
        assert (await cms.refresh(refreshed["refresh_token"])).json() == {"error": "invalid_grant"}
        assert (await cms.fhir("Patient", refreshed["access_token"])).status_code == 401

        unknown = await cms.client.post("/v2/o/revoke_token/", data={"token": "nope"}, auth=CLIENT)
        assert unknown.status_code == 200
        bad_client = await cms.client.post("/v2/o/revoke_token/", data=revoke, auth=("x", "y"))
        assert bad_client.status_code == 401
        slashless = await cms.client.post("/v2/o/revoke_token", data=revoke, auth=CLIENT)
        assert slashless.status_code == 301


async def test_revoke_ends_the_whole_grant():
    async with open_cms() as cms:
        tokens = await cms.login()
        response = await cms.client.post("/v2/o/revoke/", data={"token": tokens["access_token"]}, auth=CLIENT)
        assert response.status_code == 200
        assert (await cms.refresh(tokens["refresh_token"])).status_code == 400


async def test_grant_expiry_ends_refresh_and_data_access():
    async with open_cms() as cms:
        tokens = await cms.login(8)
        expired = await cms.client.post("/_sandbox/expire_grant", json={"user": "BBUser00008"})
        assert expired.json() == {"expired": 1}
        data = await cms.fhir("Coverage", tokens["access_token"])
        assert data.status_code == 401 and data.json()["detail"].startswith("User access has timed out")
        refresh = await cms.refresh(tokens["refresh_token"])
        assert refresh.status_code == 401 and refresh.json()["error"] == "invalid_grant"


async def test_userinfo():
    async with open_cms() as cms:
        tokens = await cms.login(42)
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        response = await cms.client.get("/v2/connect/userinfo", headers=headers)
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["sub", "name", "given_name", "family_name", "email", "iat", "patient"]
        assert body["sub"] == body["patient"] == "-19990000000043"
        assert body["name"] == f"{body['given_name']} {body['family_name']}"
        anonymous = await cms.client.get("/v2/connect/userinfo")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_discovery_documents_point_at_the_emulator():
    async with open_cms() as cms:
        oidc = (await cms.client.get("/.well-known/openid-configuration-v2")).json()
        assert oidc["token_endpoint"] == "http://test/v2/o/token"
        smart = (await cms.client.get("/v2/fhir/.well-known/smart-configuration")).json()
        assert smart["code_challenge_methods_supported"] == ["S256"]


# ------------------------------------------------------------------------------------- FHIR


async def test_metadata_needs_no_token_and_is_r4():
    async with open_cms() as cms:
        response = await cms.fhir("metadata", None)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    statement = response.json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    assert [r["type"] for r in statement["rest"][0]["resource"]] == [
        "Patient",
        "Coverage",
        "ExplanationOfBenefit",
    ]


@pytest.mark.parametrize(
    "path", ["Patient", "Coverage/", "ExplanationOfBenefit", "ExplanationOfBenefit/carrier--10000012345678"]
)
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic abc"])
async def test_data_calls_need_a_valid_bearer_token(path, authorization):
    async with open_cms() as cms:
        headers = {"Authorization": authorization} if authorization else {}
        response = await cms.client.get(f"/v2/fhir/{path}", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response.headers["www-authenticate"].startswith('Bearer realm="api"')


async def test_access_token_in_the_query_is_refused():
    async with open_cms() as cms:
        tokens = await cms.login()
        response = await cms.fhir("Patient", None, {"access_token": tokens["access_token"]})
    assert response.status_code == 400
    assert response.json()["detail"].startswith(
        "Using the access token in the query parameters is not supported."
    )


async def test_paging_links_follow_cms_shape():
    async with open_cms() as cms:
        token = (await cms.login(0))["access_token"]
        seen: list[str] = []
        url: str | None = "http://test/v2/fhir/ExplanationOfBenefit?_count=50"
        pages = []
        while url:
            response = await cms.fhir(url, token)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/fhir+json"
            bundle = response.json()
            pages.append(bundle)
            seen += entry_ids(bundle)
            url = find_link(bundle, "next")
        assert len(pages) == 4 and len(seen) == 155 == len(set(seen))
        first, second, last = pages[0], pages[1], pages[-1]
        assert first["resourceType"] == "Bundle" and first["type"] == "searchset"
        assert first["total"] == 155 and first["id"] and first["meta"]["lastUpdated"]
        assert all(set(e) == {"resource"} for e in first["entry"])  # CMS sends no fullUrl
        assert [x["relation"] for x in first["link"]] == ["first", "next", "last", "self"]
        assert [x["relation"] for x in second["link"]] == ["first", "next", "previous", "last", "self"]
        assert [x["relation"] for x in last["link"]] == ["first", "previous", "last", "self"]
        assert link(first, "next") == (
            "http://test/v2/fhir/ExplanationOfBenefit?_format=application%2Fjson%2Bfhir"
            "&startIndex=50&_count=50&patient=-19990000000001"
        )
        assert link(first, "last").endswith("startIndex=150&_count=50&patient=-19990000000001")
        assert link(second, "previous").endswith("startIndex=0&_count=50&patient=-19990000000001")
        assert link(second, "self") == (
            "http://test/v2/fhir/ExplanationOfBenefit/?_count=50&_format=application%2Fjson%2Bfhir"
            "&patient=-19990000000001&startIndex=50"
        )

        # pages fetched concurrently by startIndex line up with following next
        concurrent = await asyncio.gather(
            *[
                cms.fhir("ExplanationOfBenefit", token, {"startIndex": i, "_count": 50})
                for i in (150, 0, 100, 50)
            ]
        )
        by_start = dict(zip((150, 0, 100, 50), concurrent, strict=True))
        assert [i for s in (0, 50, 100, 150) for i in entry_ids(by_start[s].json())] == seen


async def test_count_default_limits_and_alias():
    async with open_cms() as cms:
        token = (await cms.login(3))["access_token"]
        default = (await cms.fhir("ExplanationOfBenefit", token)).json()
        assert default["total"] == 52 and len(default["entry"]) == 10
        assert link(default, "last").endswith("startIndex=50&_count=10&patient=-19990000000004")
        alias = (await cms.fhir("ExplanationOfBenefit", token, {"count": 5})).json()
        assert len(alias["entry"]) == 5
        zero = (await cms.fhir("ExplanationOfBenefit", token, {"_count": 0})).json()
        assert zero["total"] == 52 and "entry" not in zero and find_link(zero, "next") is None
        beyond = (await cms.fhir("ExplanationOfBenefit", token, {"startIndex": 60})).json()
        assert beyond["total"] == 52 and "entry" not in beyond
        for params, detail in [
            ({"_count": 51}, "value must be at most 50"),
            ({"_count": "ten"}, "expected int"),
            ({"_count": -1}, "value must be at least 0"),
            ({"startIndex": "x"}, "expected int"),
        ]:
            response = await cms.fhir("ExplanationOfBenefit", token, params)
            assert (response.status_code, response.json()) == (400, {"detail": detail}), params


async def test_search_with_and_without_trailing_slash():
    async with open_cms() as cms:
        token = (await cms.login(2))["access_token"]
        for resource, total in (("Patient", 1), ("Coverage", 4), ("ExplanationOfBenefit", 7)):
            for suffix in ("", "/"):
                response = await cms.fhir(resource + suffix, token)
                assert response.status_code == 200 and response.json()["total"] == total


async def test_type_filter():
    async with open_cms() as cms:
        token = (await cms.login(0))["access_token"]
        everything = (await cms.fhir("ExplanationOfBenefit", token, {"_count": 50})).json()["total"]
        totals = {}
        for kind in ("carrier", "pde", "outpatient"):
            bundle = (await cms.fhir("ExplanationOfBenefit", token, {"type": kind, "_count": 50})).json()
            totals[kind] = bundle["total"]
            assert all(i.startswith(kind + "--") for i in entry_ids(bundle))
            assert link(bundle, "first").endswith(f"&type={kind}")
        assert 0 < totals["carrier"] < everything
        both = await cms.fhir(
            "ExplanationOfBenefit",
            token,
            {"type": "https://bluebutton.cms.client.gov/resources/codesystem/eob-type|PDE, Carrier"},
        )
        assert both.json()["total"] == totals["carrier"] + totals["pde"]
        for bad in ("carrier,nonsense", "", "Patient"):
            response = await cms.fhir("ExplanationOfBenefit", token, {"type": bad})
            assert response.status_code == 400
            assert response.json() == {"detail": "the type parameter value is not valid"}


async def test_date_filters_select_subsets():
    async with open_cms() as cms:
        token = (await cms.login(4))["access_token"]

        async def fetch(params: list[tuple[str, str]]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            url: str | None = "ExplanationOfBenefit"
            query: Any = [*params, ("_count", "50")]
            while url:
                bundle = (await cms.fhir(url, token, query)).json()
                out += [e["resource"] for e in bundle.get("entry", [])]
                url, query = find_link(bundle, "next"), None
            return out

        everything = await fetch([])
        assert len(everything) == 200
        recent = await fetch([("_lastUpdated", "ge2023-01-01")])
        assert 0 < len(recent) < 200
        assert all(r["meta"]["lastUpdated"] >= "2023-01-01" for r in recent)
        window = await fetch([("_lastUpdated", "gt2021-06-30"), ("_lastUpdated", "lt2022-01-01")])
        assert all("2021-07-01" <= r["meta"]["lastUpdated"] < "2022-01-01" for r in window)
        assert 0 < len(window) < len(everything)

        def service_end(r: dict[str, Any]) -> str:
            return str(r["billablePeriod"]["end"] if "billablePeriod" in r else r["item"][0]["servicedDate"])

        older = await fetch([("service-date", "le2018-12-31")])
        assert 0 < len(older) < 200 and all(service_end(r) <= "2018-12-31" for r in older)
        newer = await fetch([("service-date", "gt2018-12-31")])
        assert len(older) + len(newer) == 200

        for params, detail in [
            ({"_lastUpdated": "2023-01-01"}, "the _lastUpdated operator is not valid"),
            ({"_lastUpdated": "eq2023-01-01"}, "the _lastUpdated operator is not valid"),
            ({"service-date": "2018-01-01"}, "the service-date operator is not valid"),
        ]:
            response = await cms.fhir("ExplanationOfBenefit", token, params)
            assert (response.status_code, response.json()) == (400, {"detail": detail})
        garbage = await cms.fhir("ExplanationOfBenefit", token, {"_lastUpdated": "gtyesterday"})
        assert garbage.status_code == 400
        for resource in ("Patient", "Coverage"):
            response = await cms.fhir(resource, token, {"_lastUpdated": "2020"})
            assert response.status_code == 400
            future = await cms.fhir(resource, token, {"_lastUpdated": "gt2030-01-01"})
            assert future.json()["total"] == 0


async def test_unknown_parameters_are_dropped():
    async with open_cms() as cms:
        token = (await cms.login(2))["access_token"]
        plain = (await cms.fhir("ExplanationOfBenefit", token)).json()
        noisy = (
            await cms.fhir(
                "ExplanationOfBenefit",
                token,
                {"excludeSAMHSA": "true", "includeTaxNumbers": "true", "foo": "bar"},
            )
        ).json()
        assert entry_ids(noisy) == entry_ids(plain)
        assert "foo" not in link(noisy, "self")


async def test_each_token_reads_only_its_own_beneficiary():
    async with open_cms() as cms:
        token = (await cms.login(0))["access_token"]
        own, other = "-19990000000001", "-19990000000003"
        other_claim = next(c.id for c in generate_claims(2) if c.kind == "carrier")
        own_claim = next(c.id for c in generate_claims(0) if c.kind == "carrier")
        cases = [
            ("ExplanationOfBenefit", {"patient": own}, 200),
            ("ExplanationOfBenefit", {"patient": other}, 403),
            ("ExplanationOfBenefit", {"patient": f"Patient/{own}"}, 403),  # exact match only
            ("Coverage", {"beneficiary": f"Patient/{own}"}, 200),
            ("Coverage", {"beneficiary": own}, 200),
            ("Coverage", {"beneficiary": f"Patient/{other}"}, 403),
            ("Patient", {"_id": own}, 200),
            ("Patient", {"_id": other}, 404),
            (f"Patient/{own}", None, 200),
            (f"Patient/{other}", None, 404),
            (f"Coverage/part-d-{own}", None, 200),
            (f"Coverage/part-d-{other}", None, 404),
            (f"ExplanationOfBenefit/{own_claim}", None, 200),
            (f"ExplanationOfBenefit/{other_claim}", None, 404),
            ("ExplanationOfBenefit/carrier--10000099999999", None, 404),
            ("Coverage/part-e--19990000000001", None, 400),
            ("ExplanationOfBenefit/claim-123", None, 400),
        ]
        for path, params, status in cases:
            response = await cms.fhir(path, token, params)
            assert response.status_code == status, (path, params, response.text)
            if status == 403:
                assert response.json() == {"detail": "You do not have permission to perform this action."}
            if status == 404:
                assert response.json() == {"detail": "Not found."}
        read = (await cms.fhir(f"ExplanationOfBenefit/{own_claim}", token)).json()
        assert read["id"] == own_claim and read["patient"] == {"reference": f"Patient/{own}"}


async def test_withheld_demographics():
    async with open_cms() as cms:
        tokens = await cms.login(9, share=False)
        scopes = tokens["scope"].split()
        assert "profile" not in scopes and not [s for s in scopes if s.startswith("patient/Patient")]
        assert tokens["patient"] == "-19990000000010"
        token = tokens["access_token"]
        forbidden = {"detail": "You do not have permission to perform this action."}
        for path in ("Patient", "Patient/-19990000000010"):
            response = await cms.fhir(path, token)
            assert (response.status_code, response.json()) == (403, forbidden)
        userinfo = await cms.client.get("/v2/connect/userinfo", headers={"Authorization": f"Bearer {token}"})
        assert (userinfo.status_code, userinfo.json()) == (403, forbidden)
        assert (await cms.fhir("Coverage", token)).status_code == 200
        assert (await cms.fhir("ExplanationOfBenefit", token)).status_code == 200


async def test_content_negotiation_and_gzip():
    async with open_cms() as cms:
        token = (await cms.login(0))["access_token"]
        as_json = await cms.fhir("Coverage", token, Accept="application/json")
        assert as_json.headers["content-type"] == "application/json"
        refused = await cms.fhir("Coverage", token, Accept="text/html")
        assert refused.status_code == 406
        big = await cms.fhir("ExplanationOfBenefit", token, {"_count": 50}, **{"Accept-Encoding": "gzip"})
        assert big.headers["content-encoding"] == "gzip"
        assert len(big.json()["entry"]) == 50
        plain = await cms.fhir(
            "ExplanationOfBenefit", token, {"_count": 50}, **{"Accept-Encoding": "identity"}
        )
        assert "content-encoding" not in plain.headers
        assert plain.json()["entry"] == big.json()["entry"]


async def test_full_url_is_optional():
    async with open_cms(entry_full_url=True) as cms:
        token = (await cms.login(2))["access_token"]
        bundle = (await cms.fhir("Coverage", token)).json()
    assert bundle["entry"][0]["fullUrl"] == "http://test/v2/fhir/Coverage/part-a--19990000000003"


# ---------------------------------------------------------------------------------- faults


async def test_rate_limit_fault():
    async with open_cms() as cms:
        token = (await cms.login())["access_token"]
        await cms.put_faults(rate_limit=2, retry_after=3)
        for _ in range(2):
            response = await cms.fhir("Coverage", token)
            assert response.status_code == 429
            assert response.headers["retry-after"] == "3"
            assert response.json() == {"detail": "Request was throttled. Expected available in 3 seconds."}
        assert (await cms.client.get("/_sandbox/faults")).json()["rate_limit"] == 0
        assert (await cms.fhir("Coverage", token)).status_code == 200


@pytest.mark.parametrize(
    ("status", "check"),
    [
        (502, lambda r: r.json() == {"detail": "A failure occurred contacting the upstream server"}),
        (500, lambda r: r.json() == {"error": "Server Error (500)"}),
        (503, lambda r: r.headers["content-type"].startswith("text/html")),
    ],
)
async def test_server_error_fault(status, check):
    async with open_cms() as cms:
        token = (await cms.login())["access_token"]
        await cms.put_faults(server_errors=1, server_error_status=status)
        assert (await cms.fhir("metadata", None)).status_code == 200  # metadata never counts
        response = await cms.fhir("ExplanationOfBenefit", token)
        assert response.status_code == status and check(response)
        assert (await cms.fhir("ExplanationOfBenefit", token)).status_code == 200


async def test_drop_connection_fault_in_process():
    async with open_cms(faults=Faults(drop_connections=1)) as cms:
        with pytest.raises(ConnectionDropped):
            await cms.fhir("Patient", None)
        assert (await cms.fhir("Patient", None)).status_code == 401


async def test_foreign_next_link_and_fail_page_faults():
    async with open_cms() as cms:
        token = (await cms.login(0))["access_token"]
        await cms.put_faults(foreign_next_link=True, fail_page=20)
        first = (await cms.fhir("ExplanationOfBenefit", token)).json()
        assert link(first, "next").startswith("https://evil.example.com/v2/fhir/ExplanationOfBenefit?")
        assert link(first, "self").startswith("http://test/")
        ok = await cms.fhir("ExplanationOfBenefit", token, {"startIndex": 10})
        assert ok.status_code == 200
        for _ in range(2):  # not a counter
            failed = await cms.fhir("ExplanationOfBenefit", token, {"startIndex": 20})
            assert failed.status_code == 500
        await cms.put_faults(fail_page=0)
        assert (await cms.fhir("ExplanationOfBenefit", token)).status_code == 500
        assert (await cms.fhir("ExplanationOfBenefit/" + entry_ids(first)[0], token)).status_code == 200


async def test_latency_is_added_to_fhir_answers_only():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # records the delay instead of timing it
        slept.append(seconds)

    async with open_cms(latency_ms=50, sleep=sleep) as cms:
        await cms.put_faults(latency_ms=50)
        assert (await cms.fhir("metadata", None)).status_code == 200
        assert slept == [0.1]  # the configured latency plus the fault's
        discovery = await cms.client.get("/.well-known/openid-configuration-v2")
        assert discovery.status_code == 200
        assert slept == [0.1]


async def test_fault_admin_endpoints():
    async with open_cms(faults=Faults(rate_limit=5)) as cms:
        current = (await cms.client.get("/_sandbox/faults")).json()
        assert current["rate_limit"] == 5 and current["drop_connections"] == 0
        bad = await cms.client.put("/_sandbox/faults", json={"rate_limit": -1})
        assert bad.status_code == 400
        unknown = await cms.client.put("/_sandbox/faults", json={"explode": True})
        assert unknown.status_code == 400
        await cms.put_faults(server_errors=2)  # PUT replaces
        assert (await cms.client.get("/_sandbox/faults")).json()["rate_limit"] == 0
        patched = await cms.client.patch("/_sandbox/faults", json={"drop_connections": 1})
        assert patched.json()["server_errors"] == 2 and patched.json()["drop_connections"] == 1
        await cms.client.post("/_sandbox/reset")
        assert (await cms.client.get("/_sandbox/faults")).json()["rate_limit"] == 5


async def test_admin_expire_token_and_user_info():
    async with open_cms() as cms:
        tokens = await cms.login(29900)
        expired = await cms.client.post("/_sandbox/expire_token", json={"user": "-19990000029901"})
        assert expired.json() == {"expired": 1}
        response = await cms.fhir("Coverage", tokens["access_token"])
        assert response.status_code == 401
        assert "expired" in response.headers["www-authenticate"]
        info = (await cms.client.get("/_sandbox/users/BBUser29900")).json()
        assert info["password"] == "PW29900!" and info["claims"] == 10
        assert len(info["invalid_claims"]) == 3
        assert (await cms.client.post("/_sandbox/expire_token", json={"user": "x"})).status_code == 400
        await cms.client.post("/_sandbox/reset")
        assert (await cms.refresh(tokens["refresh_token"])).status_code == 400
