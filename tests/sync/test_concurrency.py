"""Within a run the granted types are pulled at once: a latency-bound incremental round waits for
one CMS round trip per grant, not one per type (issue 12's 1,000-grant target)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.sync.emulated import Upstreams, open_service, run_once, sync_settings

USER = 2  # BBUser00002: 7 claims, 4 coverages, 1 patient
TYPES = 3
GIVE_UP_SECONDS = 30.0  # only a sequential runner ever waits this long (once per type), then fails


class HeldUpstreams(Upstreams):
    """Holds each data request until all three types' are in flight (or gives up), and records
    the most that were in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0
        self.all_in = asyncio.Event()

    async def _cms(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/v2/fhir/"):
            return await super()._cms(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight == TYPES:
            self.all_in.set()
        try:
            await asyncio.wait_for(self.all_in.wait(), GIVE_UP_SECONDS)
        except TimeoutError:
            pass
        finally:
            self.in_flight -= 1
        return await super()._cms(request)


@pytest.fixture
def upstreams() -> HeldUpstreams:
    return HeldUpstreams()


async def test_a_run_pulls_its_granted_types_at_once(
    upstreams: HeldUpstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            run = await run_once(service, grant_id)
    assert upstreams.most == TYPES
    assert run["status"] == "succeeded", run
    assert list(run["resources"]) == ["Patient", "Coverage", "ExplanationOfBenefit"]
    assert {k: v["new"] for k, v in run["resources"].items()} == {
        "Patient": 1,
        "Coverage": 4,
        "ExplanationOfBenefit": 7,
    }
    assert len(upstreams.stored_ids()) == 12 == len(set(upstreams.stored_ids()))
