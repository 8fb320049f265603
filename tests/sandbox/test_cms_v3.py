"""The emulated Blue Button API v3 against bb2-v3.md, in-process, beside v2 on the same data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from bluebutton.sandbox.cms.data import generate_claims
from bluebutton.sandbox.cms.v3data import CONTROL_NUMBER, v3_forms
from tests.sandbox.test_cms_emulator import CLIENT, REDIRECT, Cms, FakeClock, open_cms, query_of

V3_SCOPES = "openid profile patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.rs"
PILOT = 9001  # 60 claims


class V3(Cms):
    """The v2 test client's flow on `/v3` paths."""

    async def v3_code(self, user: int = PILOT, *, samhsa: bool = False, **overrides: str | None) -> str:
        params = self.authorize_params(**{"scope": V3_SCOPES, **overrides})
        response = await self.client.get("/v3/o/authorize/", params=params)
        assert response.status_code == 302, response.text
        pending = response.headers["location"]
        assert pending.startswith("/v3/o/authorize/")
        login = await self.client.post(
            pending, data={"username": f"BBUser{user:05d}", "password": f"PW{user:05d}!"}
        )
        assert login.status_code == 303, login.text
        # The page posts the hidden "False" and, when ticked, the box's "True" too.
        decision = {
            "allow": "true",
            "share_demographics": "yes",
            "share_samhsa_data": ["False", "True"] if samhsa else ["False"],
        }
        response = await self.client.post(pending, data=decision)
        assert response.status_code == 302
        return query_of(response.headers["location"])["code"]

    async def v3_login(self, user: int = PILOT, *, samhsa: bool = False) -> dict[str, Any]:
        code = await self.v3_code(user, samhsa=samhsa)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": self.verifier,
        }
        response = await self.client.post("/v3/o/token/", data=data, auth=CLIENT)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def v3(self, path: str, token: str, params: Any = None) -> httpx.Response:
        url = path if path.startswith("http") else f"/v3/fhir/{path}"
        return await self.client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})

    async def all_eobs(self, token: str, params: Any = None) -> list[dict[str, Any]]:
        """Every page by following `next`, checking v3's paging rules on the way."""
        response = await self.v3("ExplanationOfBenefit", token, {"_count": "50", **(params or {})})
        found: list[dict[str, Any]] = []
        while True:
            assert response.status_code == 200, response.text
            bundle = response.json()
            relations = [link["relation"] for link in bundle.get("link", [])]
            assert set(relations) <= {"next", "previous"}
            found += [e["resource"] for e in bundle.get("entry", [])]
            if "next" not in relations:
                assert bundle.get("total") == len(bundle.get("entry", [])) or "entry" not in bundle
                return found
            assert "total" not in bundle  # absent until the last page (§4)
            url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
            response = await self.v3(url, token)


@asynccontextmanager
async def open_v3(clock: FakeClock | None = None, **config: Any) -> AsyncIterator[V3]:
    async with open_cms(clock, **config) as cms:
        yield V3(cms.app, cms.client, cms.clock)


async def test_authorize_requires_scope_and_early_adoption() -> None:
    async with open_v3() as cms:
        missing = await cms.client.get("/v3/o/authorize/", params=cms.authorize_params())
        assert missing.status_code == 400
        assert missing.json() == {"status_code": 400, "message": "Missing Required Parameter(s): scope"}
        audit = await cms.client.get(
            "/v3/o/authorize/", params=cms.authorize_params(scope="patient/AuditEvent.rs")
        )
        assert audit.status_code == 400
        await cms.client.put("/_sandbox/v3", json={"early_adopter": False})
        refused = await cms.client.get("/v3/o/authorize/", params=cms.authorize_params(scope=V3_SCOPES))
        assert refused.status_code == 403
        assert refused.json() == {"status_code": 403, "message": "Unable to verify permission"}


async def test_only_pilot_users_sign_in_on_v3() -> None:
    async with open_v3() as cms:
        response = await cms.client.get("/v3/o/authorize/", params=cms.authorize_params(scope=V3_SCOPES))
        pending = response.headers["location"]
        other = await cms.client.post(pending, data={"username": "BBUser00042", "password": "PW00042!"})
        assert other.status_code == 200 and "Invalid username or password." in other.text
        consent = await cms.client.post(pending, data={"username": "BBUser09003", "password": "PW09003!"})
        assert consent.status_code == 303
        page = await cms.client.get(pending)
        assert (
            'id="share-samhsa"' in page.text and "checked" not in page.text.split('id="share-samhsa"')[1][:40]
        )


async def test_token_response_carries_the_v3_patient_id() -> None:
    async with open_v3() as cms:
        v2 = await cms.login(PILOT)
        v3 = await cms.v3_login()
        assert v2["patient"] == "-19990000009002"
        assert v3["patient"] == "-30250000009002"
        userinfo = await cms.client.get(
            "/v3/connect/userinfo", headers={"Authorization": f"Bearer {v3['access_token']}"}
        )
        assert userinfo.json()["sub"] == userinfo.json()["patient"] == v3["patient"]


async def test_a_consent_on_one_version_ends_the_other_versions_tokens() -> None:
    async with open_v3() as cms:
        v2 = await cms.login(PILOT)
        assert (await cms.fhir("Patient", v2["access_token"])).status_code == 200
        await cms.v3_login()
        assert (await cms.fhir("Patient", v2["access_token"])).status_code == 401
        refresh = await cms.refresh(v2["refresh_token"])
        assert refresh.status_code == 400  # v2: "Refresh token not found."
        v3 = await cms.v3_login()
        await cms.login(PILOT)
        assert (await cms.v3("Patient", v3["access_token"])).status_code == 401


async def test_v3_refresh_rules() -> None:
    async with open_v3() as cms:
        tokens = await cms.v3_login()
        unknown = await cms.client.post(
            "/v3/o/token/", data={"grant_type": "refresh_token", "refresh_token": "nope"}, auth=CLIENT
        )
        assert unknown.status_code == 403 and unknown.json() == {
            "status_code": 403,
            "message": "Request denied",
        }
        fields = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        multipart = await cms.client.post(
            "/v3/o/token/", files={k: (None, v) for k, v in fields.items()}, auth=CLIENT
        )
        assert multipart.status_code == 403  # WS parses the raw body as a query string
        form = await cms.client.post(
            "/v3/o/token/",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=CLIENT,
        )
        assert form.status_code == 200 and form.json()["patient"] == tokens["patient"]


async def test_paging_by_offset_without_total_until_the_last_page() -> None:
    async with open_v3() as cms:
        token = (await cms.v3_login(samhsa=True))["access_token"]
        first = (await cms.v3("ExplanationOfBenefit", token, {"_count": "50"})).json()
        assert "total" not in first and [link["relation"] for link in first["link"]] == ["next"]
        next_url = first["link"][0]["url"]
        assert "_offset=50" in next_url and "_source=NCH%2CDDPS" in next_url
        second = (await cms.v3(next_url, token)).json()
        assert second["total"] == len(second["entry"]) == 10
        assert [link["relation"] for link in second["link"]] == ["previous"]
        ids = [e["resource"]["id"] for e in first["entry"] + second["entry"]]
        assert ids == sorted(ids, key=int) and len(ids) == 60
        too_many = await cms.v3("ExplanationOfBenefit", token, {"_count": "51"})
        assert too_many.status_code == 400 and too_many.json()["resourceType"] == "OperationOutcome"
        default = (await cms.v3("ExplanationOfBenefit", token)).json()
        assert len(default["entry"]) == 10


async def test_v3_resources_are_valid_r4_with_keys_agreeing_across_versions() -> None:
    async with open_v3() as cms:
        v2_token = (await cms.login(PILOT))["access_token"]
        v2_bundle = (await cms.fhir("ExplanationOfBenefit", v2_token, {"_count": "50"})).json()
        v3_token = (await cms.v3_login(samhsa=True))["access_token"]
        claims = await cms.all_eobs(v3_token)
        for resource in claims:
            get_fhir_model_class("ExplanationOfBenefit").model_validate(resource)
            assert resource["meta"]["profile"][0].endswith("|2.2.0")
        v2_ids = {e["resource"]["id"] for e in v2_bundle["entry"]}
        assert not v2_ids & {c["id"] for c in claims}
        control = {
            next(i["value"] for i in c["identifier"] if i.get("system") == CONTROL_NUMBER) for c in claims
        }
        v2_control = {
            ext["valueIdentifier"]["value"]
            for e in v2_bundle["entry"]
            for ext in e["resource"].get("extension", [])
            if ext["url"].endswith(("carr_clm_cntl_num", "fi_doc_clm_cntl_num"))
        }
        assert v2_control and v2_control <= control
        for name in ("Patient", "Coverage"):
            bundle = (await cms.v3(name, v3_token)).json()
            for entry in bundle["entry"]:
                get_fhir_model_class(name).model_validate(entry["resource"])
        coverage_ids = [e["resource"]["id"] for e in (await cms.v3("Coverage", v3_token)).json()["entry"]]
        assert "dual--30250000009002" in coverage_ids and "part-a--30250000009002" in coverage_ids


async def test_samhsa_claims_vanish_unless_the_box_is_ticked() -> None:
    samhsa = [f for c in generate_claims(PILOT) for f in v3_forms(c) if f.samhsa and f.final]
    assert samhsa, "the pilot user needs a substance-use claim for this test"
    async with open_v3() as cms:
        withheld = (await cms.v3_login())["access_token"]
        shown = await cms.all_eobs(withheld)
        assert not [c for c in shown if "security" in c["meta"]]
        assert len(shown) == 60 - len(samhsa)
        assert (await cms.v3(f"ExplanationOfBenefit/{samhsa[0].id}", withheld)).status_code == 404
        assert (await cms.fhir("ExplanationOfBenefit", withheld)).status_code == 403  # v2 EOB refused
        shared = (await cms.v3_login(samhsa=True))["access_token"]
        everything = await cms.all_eobs(shared)
        marked = [c for c in everything if c["meta"].get("security")]
        assert len(everything) == 60 and {c["id"] for c in marked} == {f.id for f in samhsa}
        assert marked[0]["meta"]["security"][0]["code"] == "42CFRPart2"


async def test_not_final_claims_only_on_request() -> None:
    async with open_v3() as cms:
        token = (await cms.v3_login(samhsa=True))["access_token"]
        final = await cms.all_eobs(token)
        assert {c["meta"]["source"] for c in final} <= {"NCH", "DDPS"}
        every = await cms.all_eobs(token, {"_source": "NCH,DDPS,FISS,MCS,VMS"})
        not_final = [c for c in every if c["meta"]["source"] not in ("NCH", "DDPS")]
        assert not_final and len(every) == len(final) + len(not_final)
        tagged = await cms.all_eobs(
            token, {"_tag": "https://bluebutton.cms.gov/fhir/CodeSystem/Final-Action|NotFinalAction"}
        )
        assert {c["id"] for c in tagged} == {c["id"] for c in not_final}
        bad = await cms.v3("ExplanationOfBenefit", token, {"_source": "XYZ"})
        assert bad.status_code == 400
        assert bad.json()["issue"][0]["diagnostics"].startswith("Unknown source.")


async def test_part_d_only_app() -> None:
    async with open_v3() as cms:
        await cms.client.put("/_sandbox/v3", json={"part_d_only": True})
        token = (await cms.v3_login())["access_token"]
        claims = await cms.all_eobs(token, {"_source": "NCH,FISS"})
        assert claims and {c["meta"]["source"] for c in claims} == {"DDPS"}
        assert (await cms.fhir("ExplanationOfBenefit", token)).status_code == 403


async def test_merged_beneficiary() -> None:
    async with open_v3() as cms:
        tokens = await cms.v3_login(samhsa=True)
        merged = (await cms.client.post("/_sandbox/v3/merge", json={"user": "BBUser09001"})).json()
        assert merged["old"] == tokens["patient"] and merged["new"] != merged["old"]
        stub = (await cms.v3(f"Patient/{merged['old']}", tokens["access_token"])).json()
        assert stub["link"] == [
            {
                "other": {"reference": f"Patient/{merged['new']}", "display": merged["new"]},
                "type": "replaced-by",
            }
        ]
        empty = (await cms.v3("ExplanationOfBenefit", tokens["access_token"])).json()
        assert "entry" not in empty and set(empty) == {"resourceType", "meta", "type"}
        refreshed = await cms.client.post(
            "/v3/o/token/",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=CLIENT,
        )
        assert refreshed.json()["patient"] == merged["new"]
        assert len(await cms.all_eobs(refreshed.json()["access_token"])) == 60
        current = (await cms.v3(f"Patient/{merged['new']}", refreshed.json()["access_token"])).json()
        assert current["link"][0]["type"] == "replaces"


async def test_insurance_card_is_generated_afresh() -> None:
    async with open_v3() as cms:
        token = (await cms.v3_login())["access_token"]
        first = (await cms.v3("Patient/$generate-insurance-card", token)).json()
        second = (await cms.v3("Patient/$generate-insurance-card", token)).json()
        assert first["type"] == "collection"
        get_fhir_model_class("Bundle").model_validate(first)
        assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in first["entry"])
        assert first["entry"][0]["resource"]["id"] != second["entry"][0]["resource"]["id"]
        plans = [
            e["resource"]["class"][0]["value"]
            for e in first["entry"]
            if e["resource"]["resourceType"] == "Coverage"
        ]
        assert plans == ["Part A", "Part B", "Part C", "Part D", "Dual Medicare/Medicaid"]


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_rate_limit_headers_and_throttle(version: str) -> None:
    async with open_v3() as cms:
        await cms.client.put("/_sandbox/rate_limit", json={"limit": 2, "window_seconds": 10})
        tokens = await (cms.v3_login(samhsa=True) if version == "v3" else cms.login(PILOT))
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        first = await cms.client.get(f"/{version}/fhir/Patient", headers=headers)
        assert first.headers["X-RateLimit-Limit"] == "2"
        assert first.headers["X-RateLimit-Remaining"] == "1"
        assert float(first.headers["X-RateLimit-Reset"]) == pytest.approx(10.0)
        cms.clock.advance(4)
        second = await cms.client.get(f"/{version}/fhir/Patient", headers=headers)
        assert second.headers["X-RateLimit-Remaining"] == "0"
        assert float(second.headers["X-RateLimit-Reset"]) == pytest.approx(6.0)
        third = await cms.client.get(f"/{version}/fhir/Patient", headers=headers)
        assert third.status_code == 429 and third.headers["Retry-After"] == "6"
        cms.clock.advance(6)
        assert (await cms.client.get(f"/{version}/fhir/Patient", headers=headers)).status_code == 200


async def test_unknown_v3_refresh_is_403_where_v2_says_400() -> None:
    async with open_v3() as cms:
        v2 = await cms.refresh("unknown")
        assert v2.status_code == 400
        form = {"grant_type": "refresh_token", "refresh_token": "unknown"}
        v3 = await cms.client.post("/v3/o/token", data=form, auth=CLIENT)
        assert v3.status_code == 403


async def test_last_updated_filters_patient_and_coverage_too() -> None:
    async with open_v3() as cms:
        token = (await cms.v3_login())["access_token"]
        for name in ("Patient", "Coverage"):
            everything = (await cms.v3(name, token, {"_lastUpdated": "ge2000-01-01"})).json()
            assert everything["entry"]
            later = (await cms.v3(name, token, {"_lastUpdated": "ge2030-01-01"})).json()
            assert "entry" not in later
