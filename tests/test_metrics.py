"""`GET /metrics` scraped from the real app: HTTP by route template, CMS and connect calls by
outcome, refreshes, Bundles; behind the operator key unless public; no id, token or query."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.factories import (
    AUTH,
    CMS_ORIGIN,
    CONNECT_ORIGIN,
    PATIENT_ID,
    TOKEN,
    cms_page,
    fhir_response,
    make_eob,
    make_settings,
    token_body,
)
from tests.fakes import Connect
from tests.running import open_client
from tests.scrape import Samples, samples, value
from tests.wire import diagnostics

KEY = "metrics-operator-key-0123456789-abcdefghij"
EOB = "ExplanationOfBenefit"

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")


async def scrape(client: httpx.AsyncClient) -> tuple[str, Samples]:
    response = await client.get("/metrics", headers={"X-API-Key": KEY})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, samples(response.text)


@pytest.mark.parametrize(
    ("headers", "status", "hint"),
    [
        pytest.param({}, 401, "No X-API-Key header", id="no-key"),
        pytest.param({"X-API-Key": "x" * 40}, 401, "not the operator key", id="wrong-key"),
    ],
)
async def test_metrics_need_the_operator_key(headers: dict[str, str], status: int, hint: str) -> None:
    async with open_client(make_settings(admin_api_key=KEY)) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == status
    assert hint in diagnostics(response)


async def test_metrics_without_a_key_configured_say_how_and_public_metrics_need_none() -> None:
    async with open_client(make_settings()) as client:
        response = await client.get("/metrics")
    assert response.status_code == 503
    assert "BLUEBUTTON_METRICS_PUBLIC=true" in diagnostics(response)
    async with open_client(make_settings(metrics_public=True)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert "bluebutton_http_requests_total" in response.text


async def test_http_requests_are_labelled_by_route_template_never_the_path_or_query() -> None:
    async with open_client(make_settings(admin_api_key=KEY)) as client:
        grant = "0b6f1c2e-4a7d-4f3e-9a55-1d2c3b4a5f60"
        assert (
            await client.get(f"/bluebutton/grants/{grant}", headers={"X-API-Key": KEY})
        ).status_code == 503
        assert (await client.get("/no/such/path-" + PATIENT_ID)).status_code == 404
        assert (await client.get("/health", params={"patient": PATIENT_ID})).status_code == 200
        text, found = await scrape(client)
    total = "bluebutton_http_requests_total"
    assert value(found, total, method="GET", route="/bluebutton/grants/{grant_id}", status="503") == 1
    assert value(found, total, method="GET", route="(unmatched)", status="404") == 1
    assert value(found, total, method="GET", route="/health", status="200") == 1
    histogram = "bluebutton_http_request_duration_seconds_count"
    assert value(found, histogram, method="GET", route="/health", status="200") == 1
    assert grant not in text and PATIENT_ID not in text and "path-" not in text


async def test_cms_and_connect_calls_are_counted_by_outcome(
    cms_mock: respx.MockRouter, connect_mock: respx.MockRouter
) -> None:
    connect = Connect(connect_mock)
    page = fhir_response(cms_page([make_eob(1)], total=1))
    cms_mock.get(EOB).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(503),
            httpx.ReadTimeout("slow"),
            page,
        ]
    )
    async with open_client(make_settings(admin_api_key=KEY)) as client:
        response = await client.get("/bluebutton/fhir", params={"resource_type": EOB}, headers=AUTH)
        assert response.status_code == 200, response.text
        text, found = await scrape(client)
    assert len(connect.stored) == 1
    counted = "bluebutton_upstream_requests_total"
    for outcome in ("429", "5xx", "timeout", "2xx"):
        assert value(found, counted, upstream="cms", outcome=outcome) == 1, outcome
    assert value(found, counted, upstream="connect", outcome="2xx") == 1
    assert (
        value(found, "bluebutton_upstream_request_duration_seconds_count", upstream="cms", outcome="2xx") == 1
    )
    assert value(found, "bluebutton_connect_bundles_posted_total", outcome="2xx") == 1
    assert TOKEN not in text and CMS_ORIGIN not in text and CONNECT_ORIGIN not in text


async def test_refreshes_are_counted_by_outcome() -> None:
    with respx.mock(base_url=CMS_ORIGIN, assert_all_called=False) as cms:
        cms.post("/v2/o/token/").mock(
            side_effect=[
                httpx.Response(200, json=token_body()),
                httpx.Response(400, json={"error": "invalid_grant"}),
            ]
        )
        async with open_client(make_settings(admin_api_key=KEY)) as client:
            assert (await client.post("/bluebutton/refresh", json={"refresh_token": "r1"})).status_code == 200
            assert (await client.post("/bluebutton/refresh", json={"refresh_token": "r2"})).status_code == 401
            text, found = await scrape(client)
    assert value(found, "bluebutton_token_refreshes_total", outcome="refreshed") == 1
    assert value(found, "bluebutton_token_refreshes_total", outcome="rejected") == 1
    assert value(found, "bluebutton_token_refreshes_total", outcome="error") == 0
    assert "r1" not in text.split() and "invalid_grant" not in text
