"""Time in the CMS emulator: its clock control, the weekly schedule of new claims, CMS's sandbox
`expire_authenticated_user`, the access-token lifetime at run time, and the token-call counts."""

from __future__ import annotations

from datetime import datetime

import pytest

from bluebutton.sandbox.cms.data import claim_count, patient_id
from bluebutton.sandbox.cms.schedule import WEEK_SECONDS, ClaimSchedule
from tests.sandbox.test_cms_emulator import CLIENT, FakeClock, open_cms

USER = 2  # BBUser00002: 7 claims, one page


async def _eob_ids(cms, token: str, **params: str) -> list[str]:
    response = await cms.fhir("ExplanationOfBenefit", token, params={"_count": "50", **params})
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


async def test_a_week_of_emulated_time_brings_the_weeks_claims() -> None:
    clock = FakeClock()
    async with open_cms(clock) as cms:
        tokens = await cms.login(USER)
        before = await _eob_ids(cms, tokens["access_token"])
        assert len(before) == claim_count(USER)
        cms.clock.advance(WEEK_SECONDS - 1)  # real time moving: not yet a week
        tokens = await cms.login(USER)  # the old access token aged past its hour
        assert await _eob_ids(cms, tokens["access_token"]) == before

        moved = await cms.client.post("/_sandbox/clock", json={"advance_seconds": 2 * WEEK_SECONDS})
        assert moved.status_code == 200 and moved.json()["weeks"] == 2
        expected = ClaimSchedule(1_750_000_000.0, 3)
        weekly = [expected.count(USER, 1), expected.count(USER, 2)]
        assert all(1 <= n <= 3 for n in weekly)

        tokens = await cms.login(USER)
        after = await _eob_ids(cms, tokens["access_token"])
        assert set(before) < set(after) and len(after) == len(before) + sum(weekly)
        info = (await cms.client.get("/_sandbox/users/BBUser00002")).json()
        assert info["claims"] == len(after)
        # only the two batches are newer than the start, each stamped with its week's moment
        new = await _eob_ids(cms, tokens["access_token"], _lastUpdated="gt2025-06-15")
        assert sorted(new) == sorted(set(after) - set(before))
        second = await cms.fhir(
            "ExplanationOfBenefit", tokens["access_token"], params={"_lastUpdated": "ge2025-06-29"}
        )
        stamps = {e["resource"]["meta"]["lastUpdated"][:19] for e in second.json()["entry"]}
        assert stamps == {expected.arrival(2).strftime("%Y-%m-%dT%H:%M:%S")}


async def test_users_past_09999_and_a_zero_schedule_get_no_weekly_claims() -> None:
    async with open_cms(weekly_claims=0) as cms:
        await cms.client.post("/_sandbox/clock", json={"advance_seconds": 5 * WEEK_SECONDS})
        assert (await cms.client.get("/_sandbox/users/BBUser00002")).json()["claims"] == claim_count(USER)
    async with open_cms() as cms:
        await cms.client.post("/_sandbox/clock", json={"advance_seconds": 5 * WEEK_SECONDS})
        assert (await cms.client.get("/_sandbox/users/BBUser29999")).json()["claims"] == 146


async def test_the_clock_moves_token_expiry_and_the_bundle_stamp() -> None:
    async with open_cms() as cms:
        tokens = await cms.login(USER)
        start = (await cms.client.get("/_sandbox/clock")).json()
        assert start["offset_seconds"] == 0
        moved = (await cms.client.post("/_sandbox/clock", json={"advance_seconds": 3601})).json()
        assert datetime.fromisoformat(moved["now"]).timestamp() == pytest.approx(1_750_003_601.0)
        assert (await cms.fhir("Coverage", tokens["access_token"])).status_code == 401
        fresh = (await cms.refresh(tokens["refresh_token"])).json()
        bundle = (await cms.fhir("Coverage", fresh["access_token"])).json()
        assert bundle["meta"]["lastUpdated"].startswith(moved["now"][:19])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"advance_seconds": -1}, id="backwards"),
        pytest.param({"advance_seconds": "1"}, id="a-string"),
        pytest.param({}, id="missing"),
    ],
)
async def test_a_bad_clock_move_is_refused_saying_what_to_send(body: dict[str, object]) -> None:
    async with open_cms() as cms:
        answer = await cms.client.post("/_sandbox/clock", json=body)
        assert answer.status_code == 400 and "advance_seconds" in answer.json()["detail"]
        assert (await cms.client.get("/_sandbox/clock")).json()["offset_seconds"] == 0


async def test_expire_authenticated_user_ends_the_grant_like_cms() -> None:
    async with open_cms() as cms:
        tokens = await cms.login(USER)
        url = f"/v2/o/expire_authenticated_user/{patient_id(USER)}/"
        assert (await cms.client.post(url)).status_code == 401  # client credentials required
        done = await cms.client.post(url, auth=CLIENT)
        assert (done.status_code, done.text) == (200, "success")
        data = await cms.fhir("Coverage", tokens["access_token"])
        assert data.status_code == 401 and "timed out" in data.json()["detail"]
        refresh = await cms.refresh(tokens["refresh_token"])
        assert refresh.status_code == 401 and refresh.json()["error"] == "invalid_grant"

        no_grant = await cms.client.post(f"/v2/o/expire_authenticated_user/{patient_id(5)}/", auth=CLIENT)
        assert (no_grant.status_code, no_grant.json()) == (
            404,
            {"detail": "Data Access Grant was Not Found."},
        )
        unknown = await cms.client.post("/v2/o/expire_authenticated_user/-1/", auth=CLIENT)
        assert unknown.status_code == 404 and unknown.json()["detail"].startswith("Patient was Not Found")


async def test_the_access_token_lifetime_changes_at_run_time_and_reset_restores_it() -> None:
    async with open_cms() as cms:
        changed = await cms.client.put("/_sandbox/token_lifetime", json={"seconds": 90})
        assert changed.json() == {"access_token_seconds": 90}
        tokens = await cms.login(USER)
        assert tokens["expires_in"] == 90
        cms.clock.advance(91)
        assert (await cms.fhir("Coverage", tokens["access_token"])).status_code == 401
        bad = await cms.client.put("/_sandbox/token_lifetime", json={"seconds": 0})
        assert bad.status_code == 400 and "seconds" in bad.json()["detail"]
        await cms.client.post("/_sandbox/reset")
        assert (await cms.login(USER))["expires_in"] == 3600


async def test_token_calls_are_counted_by_grant_type() -> None:
    async with open_cms() as cms:
        tokens = await cms.login(USER)
        await cms.refresh(tokens["refresh_token"])
        await cms.refresh(tokens["refresh_token"])  # reused: refused, still a call
        stats = (await cms.client.get("/_sandbox/stats")).json()
        assert stats == {"token_calls": {"authorization_code": 1, "refresh_token": 2}}
        await cms.client.post("/_sandbox/reset")
        assert (await cms.client.get("/_sandbox/stats")).json() == {"token_calls": {}}
