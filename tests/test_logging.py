"""Logs: one access line per request, and never a token, an Authorization value or FHIR payload,
at any level, on success or on any error path."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

import bluebutton.pull.pipeline
from bluebutton.outbound.logs import redact_http_logs
from tests.factories import (
    AUTH,
    TOKEN,
    cms_page,
    cms_pages,
    eob_with_entry_size,
    fhir_response,
    make_eob,
    make_patient,
    make_settings,
)
from tests.fakes import Connect, serve_pages
from tests.running import open_client

EOB = "ExplanationOfBenefit"
CANARY = "Zanzibar-Quokka-4471"  # a value that only exists inside the claims
CLAIM_IDS = [f"pde--{990_000_000 + n}" for n in range(60)]

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")


@pytest.fixture
def all_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Root and every logger that exists at DEBUG, restored afterwards by caplog; with the
    redaction `python -m bluebutton` installs in its process."""
    redact_http_logs()
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def claims(count: int = 60) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        claim = make_eob(n, claim_type="pde", note=f"{CANARY} note {n}")
        claim["id"] = CLAIM_IDS[n]
        claim["patient"]["display"] = f"{CANARY} Beneficiary"
        out.append(claim)
    return out


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts += [record.getMessage(), repr(record.args), record.exc_text or "", repr(record.__dict__)]
    return "\n".join(parts)


def assert_clean(text: str, *secrets: str) -> None:
    for secret in (TOKEN, f"Bearer {TOKEN}", CANARY, *CLAIM_IDS, *secrets):
        assert secret not in text, f"{secret!r} was logged"


async def test_access_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    caplog.set_level(logging.INFO)
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)], total=1)))
    responses = [
        await client.get("/health"),
        await client.get(
            "/bluebutton/fhir", params={"resource_type": EOB, "patient": "-19990000000777"}, headers=AUTH
        ),
        await client.get("/bluebutton/fhir", params={"resource_type": "Claim"}, headers=AUTH),
    ]
    access = [r for r in caplog.records if r.name == "bluebutton.access"]
    assert len(access) == len(responses)
    for record, response in zip(access, responses, strict=True):
        line = record.getMessage()
        assert re.fullmatch(r"GET /[\w/]+ \d{3} \d+(\.\d+)?ms id=\w+", line), line
        assert f" {response.status_code} " in line
        assert response.headers["X-Request-ID"] in line
    assert [r.getMessage().split()[1] for r in access] == ["/health", "/bluebutton/fhir", "/bluebutton/fhir"]
    assert "-19990000000777" not in "\n".join(r.getMessage() for r in access)
    assert "resource_type" not in "\n".join(r.getMessage() for r in access)


async def test_no_token_or_payload_in_logs_on_success_and_every_error_path(
    client: httpx.AsyncClient,
    small_client: httpx.AsyncClient,
    all_debug: pytest.LogCaptureFixture,
    cms_mock: respx.MockRouter,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route = serve_pages(cms_mock, EOB, cms_pages(EOB, claims()))

    async def fhir(c: httpx.AsyncClient = client, headers: dict[str, str] = AUTH, **params: str) -> int:
        response = await c.get("/bluebutton/fhir", params={"resource_type": EOB, **params}, headers=headers)
        return response.status_code

    # full successful transfers, both answers
    assert await fhir() == 200
    assert await fhir(return_cms="true") == 200
    # auth failures (a malformed token must not be logged either)
    assert await fhir(headers={}) == 401
    assert await fhir(headers={"Authorization": f"Basic {TOKEN}"}) == 401
    assert await fhir(headers={"Authorization": f"Bearer {TOKEN} {CANARY}"}) == 401
    # query refused
    assert await fhir(type="carrier,nonsense") == 422
    # connect refuses, then is unreachable, then fails midway
    connect.script = [httpx.Response(500, json={"detail": "Object of type Bundle is not JSON serializable"})]
    assert await fhir() == 502
    connect.script = [httpx.ConnectError("refused")] * 5
    assert await fhir() == 502
    route.side_effect = None
    small = [eob_with_entry_size(n, 4000) for n in range(6)]
    for n, claim in enumerate(small):
        claim["id"] = CLAIM_IDS[n]
        claim["patient"]["display"] = CANARY
    route.mock(return_value=fhir_response(cms_page(small, total=6)))
    connect.script = [None, httpx.Response(500, json={"detail": "broker down"})]
    assert await fhir(small_client) == 502
    # CMS failures
    for answer, status in [
        (fhir_response({"detail": "Authentication credentials were not provided."}, 401), 401),
        (fhir_response({"detail": "You do not have permission to perform this action."}, 403), 403),
        (fhir_response({"detail": "Not found."}, 404), 404),
        (httpx.Response(429, json={"detail": "throttled"}, headers={"Retry-After": "1"}), 429),
        (httpx.Response(503), 502),
        (httpx.Response(200, content=b"{not json"), 502),
    ]:
        route.mock(return_value=answer)
        assert await fhir() == status
    route.mock(side_effect=httpx.ConnectError("refused"))
    assert await fhir() == 502
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    assert await fhir() == 504
    # invalid claims: 422 naming entries, payload still not logged
    invalid = claims(5)
    for claim in invalid:
        del claim["provider"]
    route.mock(side_effect=None, return_value=fhir_response(cms_page(invalid, total=5)))
    assert await fhir() == 422
    # an unexpected error in our code
    route.mock(return_value=fhir_response(cms_page(claims(3), total=3)))

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(bluebutton.pull.pipeline, "split_entries", explode)
    assert await fhir() == 500

    assert len(all_debug.records) >= 20  # the capture works: access lines, transfer lines, the 500
    assert any(r.levelno == logging.ERROR for r in all_debug.records)
    assert_clean(everything_logged(all_debug))


async def test_beneficiary_id_from_the_query_is_not_logged(
    all_debug: pytest.LogCaptureFixture,
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect: Connect,
) -> None:
    """A Patient search by `_id`: the id is the Patient resource's own id, i.e. payload."""
    beneficiary = "-19990000000777"
    cms_mock.get("Patient").mock(
        return_value=fhir_response(cms_page([make_patient(beneficiary, family=CANARY)], total=1))
    )
    response = await client.get(
        "/bluebutton/fhir", params={"resource_type": "Patient", "patient": beneficiary}, headers=AUTH
    )
    assert response.status_code == 200
    assert all_debug.records
    assert_clean(everything_logged(all_debug), beneficiary)


async def test_secrets_in_settings_are_not_logged(all_debug: pytest.LogCaptureFixture) -> None:
    async with open_client(make_settings(cms_client_id="app-id", cms_client_secret="Sekr1t-Value-99")) as c:
        assert (await c.get("/health")).status_code == 200
    assert "Sekr1t-Value-99" not in everything_logged(all_debug)
