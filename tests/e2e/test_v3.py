"""v2 and v3 in one deployment, over real sockets: the connector (configured for v2) authorizes,
pulls, refreshes and answers on v3 when asked, against the emulated CMS's `/v3`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.e2e.harness import Harness, diagnostics, header_list

pytestmark = pytest.mark.usefixtures("healthy")

PILOT = 9001  # 60 claims, a few of them substance-use claims
EOB = "ExplanationOfBenefit"


def cms_v3_entries(e2e: Harness, token: str) -> list[dict[str, Any]]:
    """Every v3 EOB entry, by following `next` as the v3 rules say."""
    url: str | None = f"{e2e.stack.cms_url}/v3/fhir/{EOB}?_count=50"
    entries: list[dict[str, Any]] = []
    while url is not None:
        response = e2e.client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        page = orjson.loads(response.content)
        entries += page.get("entry", [])
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return entries


def test_a_v3_grant_pulls_v3_claims_beside_the_default_v2(e2e: Harness) -> None:
    tokens = e2e.tokens(PILOT, version=3, share_samhsa=True)
    assert tokens["api_version"] == 3 and tokens["patient"] == "-30250000009002"
    before = e2e.records()

    response = e2e.fhir(tokens["access_token"], EOB, version=3, return_cms="true")

    assert response.status_code == 200, response.text
    assert response.headers["X-Blue-Button-Version"] == "3"
    served = cms_v3_entries(e2e, tokens["access_token"])
    assert len(served) == 60
    assert orjson.loads(response.content)["entry"] == served  # every page, in CMS's order
    locations = header_list(response, "X-LFH-Data-Record-Locations")
    assert len(e2e.records()) == len(before) + len(locations)
    stored = [e for location in locations for e in e2e.read_back(location).bundle["entry"]]
    assert [e["resource"]["id"] for e in stored] == [e["resource"]["id"] for e in served]


def test_withheld_samhsa_claims_are_absent_and_v2_eob_is_refused(e2e: Harness) -> None:
    tokens = e2e.tokens(PILOT, version=3)  # the box left unticked, as by default
    v3 = e2e.fhir(tokens["access_token"], EOB, version=3, return_cms="true")
    assert v3.status_code == 200, v3.text
    claims = [e["resource"] for e in orjson.loads(v3.content).get("entry", [])]
    assert 0 < len(claims) < 60 and not [c for c in claims if c["meta"].get("security")]

    v2 = e2e.fhir(tokens["access_token"], EOB)  # the deployment's default version: 2
    assert v2.status_code == 403, v2.text
    assert v2.headers.get("X-Blue-Button-Version") is None


def test_v3_refresh_and_its_refusal(e2e: Harness) -> None:
    tokens = e2e.tokens(PILOT, version=3)
    refreshed = e2e.client.post(
        f"{e2e.stack.connector_url}/bluebutton/refresh",
        json={"refresh_token": tokens["refresh_token"], "api_version": 3},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["api_version"] == 3 and refreshed.json()["patient"] == tokens["patient"]
    spent = e2e.client.post(
        f"{e2e.stack.connector_url}/bluebutton/refresh",
        json={"refresh_token": tokens["refresh_token"], "api_version": 3},  # single-use
    )
    assert spent.status_code == 401 and "invalid_grant" in diagnostics(spent)
    unknown = e2e.client.post(
        f"{e2e.stack.connector_url}/bluebutton/refresh",
        json={"refresh_token": "never-issued-0123456789", "api_version": 3},
    )
    assert unknown.status_code == 401
    assert "Request denied" in diagnostics(unknown)  # CMS's v3 answer (403), kept in the outcome


def test_userinfo_on_v3(e2e: Harness) -> None:
    tokens = e2e.tokens(PILOT, version=3)
    response = e2e.client.get(
        f"{e2e.stack.connector_url}/bluebutton/userinfo",
        params={"version": "3"},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["patient"] == tokens["patient"]


def test_an_unknown_version_is_a_clear_422(e2e: Harness) -> None:
    response = e2e.client.get(f"{e2e.stack.connector_url}/bluebutton/authorize", params={"version": "4"})
    assert response.status_code == 422
    assert "version" in response.text
