"""A pull's limits through the real app: one deadline for fetch + validate + forward, and a caller
that disconnects (what is stored is reported, nothing is forwarded after it left)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx

import bluebutton.pipeline
from tests.factories import (
    AUTH,
    cms_page,
    eob_with_entry_size,
    fhir_response,
    make_eob,
    make_settings,
    record_location,
    record_uuid,
)
from tests.fakes import Connect, HeldCms, HeldConnect
from tests.running import open_client
from tests.wire import diagnostics, outcome_issues

EOB = "ExplanationOfBenefit"

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")


async def get_fhir(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    return await client.get("/bluebutton/fhir", params={"resource_type": EOB, **params}, headers=AUTH)


def sized_claims(count: int, size: int) -> list[dict[str, Any]]:
    return [eob_with_entry_size(n, size) for n in range(count)]


class Deadlines:
    """Replaces the pipeline's deadline with the same `asyncio.Timeout`, kept so a test can make
    it pass at the moment it chooses instead of waiting for it."""

    def __init__(self) -> None:
        self.started: list[asyncio.Timeout] = []
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> asyncio.Timeout:
        self.seconds.append(seconds)
        self.started.append(asyncio.timeout(seconds))
        return self.started[-1]

    def pass_now(self) -> None:
        [timeout] = self.started
        timeout.reschedule(asyncio.get_running_loop().time())


@pytest.fixture
def deadlines(monkeypatch: pytest.MonkeyPatch) -> Deadlines:
    recorder = Deadlines()
    monkeypatch.setattr(bluebutton.pipeline, "deadline", recorder)
    return recorder


# ----------------------------------------------------------------------------------------- deadline


async def test_a_cms_that_never_answers_is_504_at_the_deadline(
    cms_mock: respx.MockRouter, connect: Connect
) -> None:
    never = HeldCms(lambda request: fhir_response(cms_page([make_eob(1)], total=1)))
    cms_mock.get(EOB).mock(side_effect=never)
    async with open_client(make_settings(pull_timeout_seconds=0.05)) as client:
        # The bound only turns a missing deadline into a failure instead of a hung test.
        response = await asyncio.wait_for(get_fhir(client), timeout=120)
    assert response.status_code == 504, response.text
    [issue] = outcome_issues(response)
    assert issue["code"] == "timeout"
    assert "BLUEBUTTON_PULL_TIMEOUT_SECONDS=0.05 s" in issue["diagnostics"]
    assert "before anything was sent to LinuxForHealth connect" in issue["diagnostics"]
    assert response.headers["X-LFH-Bundle-Count"] == "0"
    assert len(never.calls) == 1
    assert not connect.route.calls


async def test_one_deadline_covers_the_whole_pull_by_default_300_s(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, deadlines: Deadlines
) -> None:
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)], total=1)))
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    assert deadlines.seconds == [300.0]


async def test_the_deadline_passing_while_connect_holds_a_bundle_says_what_is_stored(
    small_client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect_mock: respx.MockRouter,
    deadlines: Deadlines,
) -> None:
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page(sized_claims(10, 4000), total=10)))
    connect = HeldConnect(connect_mock, held={3})  # never answers the third POST
    request = asyncio.ensure_future(get_fhir(small_client))
    await asyncio.wait_for(connect.holding.wait(), timeout=60)
    deadlines.pass_now()
    response = await request

    assert response.status_code == 504, response.text
    issues = outcome_issues(response)
    text = diagnostics(response)
    assert "BLUEBUTTON_PULL_TIMEOUT_SECONDS=300 s" in issues[0]["diagnostics"]
    assert "stored 2 of 5 Bundles; entries 4-9 were not stored" in issues[0]["diagnostics"]
    assert "same Idempotency-Key" in issues[0]["diagnostics"]
    for n in (1, 2):
        assert record_uuid(n) in text
        assert record_location(n) in text
    unknown = [i for i in issues if i["severity"] == "warning"]
    assert len(unknown) == 1
    assert "Bundle 3 (entries 4-5) was being sent and may have been stored" in unknown[0]["diagnostics"]
    assert response.headers["X-LFH-Bundle-Count"] == "2"
    assert response.headers["X-LFH-Record-UUIDs"] == f"{record_uuid(1)},{record_uuid(2)}"
    assert connect.posts == 3  # nothing after the deadline
    assert len(connect.stored) == 2
