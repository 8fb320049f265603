"""The concurrent pull: pages by index, a few at a time, in CMS order, all or nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import respx

from bluebutton.cms.client import Pacer
from tests.factories import cms_pages, fhir_response, make_eob, page_url
from tests.fakes import Connect, SleepRecorder
from tests.running import EOB, cms_client, ids, pull_pages
from tests.wire import outcome_issues

TOKEN_HEADER = {"Authorization": "Bearer test-access-token"}


def _starts(route: respx.Route) -> list[int]:
    return [int(call.request.url.params.get("startIndex", "0")) for call in route.calls]


async def test_concurrency_is_bounded_and_no_page_is_asked_twice(cms_mock: respx.MockRouter) -> None:
    claims = [make_eob(n) for n in range(500)]
    pages = cms_pages(EOB, claims)
    in_flight = 0
    most = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)  # let the others start
        await asyncio.sleep(0)
        in_flight -= 1
        return fhir_response(pages[int(request.url.params.get("startIndex", "0")) // 50])

    route = cms_mock.get(EOB).mock(side_effect=answer)
    async with cms_client(cms_fetch_concurrency=3) as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]  # CMS order, each claim once
    assert sorted(_starts(route)) == list(range(0, 500, 50))  # each page asked for exactly once
    assert 1 < most <= 3


async def test_a_page_that_arrives_early_waits_for_its_turn(cms_mock: respx.MockRouter) -> None:
    """The last page answers first and the second last; the order of the pull stays CMS's."""
    claims = [make_eob(n) for n in range(200)]
    pages = cms_pages(EOB, claims)
    gates = {start: asyncio.Event() for start in (50, 100, 150)}

    async def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        if start == 150:
            gates[150].set()
        elif start in gates:
            await asyncio.wait_for(gates[start + 50].wait(), timeout=10)
            gates[start].set()
        return fhir_response(pages[start // 50])

    cms_mock.get(EOB).mock(side_effect=answer)
    async with cms_client(cms_fetch_concurrency=4) as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]


async def test_search_that_grew_during_the_pull_is_followed_to_its_end(cms_mock: respx.MockRouter) -> None:
    """The first page said 100, but by the time page 2 is read there are 120: follow its `next`."""
    claims = [make_eob(n) for n in range(120)]
    grown = cms_pages(EOB, claims)
    first = cms_pages(EOB, claims[:100])[0]

    def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        return fhir_response(first if start == 0 else grown[start // 50])

    route = cms_mock.get(EOB).mock(side_effect=answer)
    async with cms_client() as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]
    assert _starts(route) == [0, 50, 100]


async def test_429_mid_pull_pauses_every_page_then_completes(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder
) -> None:
    claims = [make_eob(n) for n in range(200)]
    pages = cms_pages(EOB, claims)
    throttled = {100: 1}

    def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        if throttled.get(start):
            throttled[start] -= 1
            return fhir_response({"detail": "Request was throttled."}, 429, **{"Retry-After": "7"})
        return fhir_response(pages[start // 50])

    cms_mock.get(EOB).mock(side_effect=answer)
    async with cms_client(cms_fetch_concurrency=1, cms_retry_backoff_seconds=0) as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]
    assert 7 in cms_sleeps.delays  # the throttled page waited Retry-After, then was asked again


async def test_after_a_429_no_request_of_the_pull_starts_before_retry_after(
    cms_sleeps: SleepRecorder,
) -> None:
    pacer = Pacer(sleep=cms_sleeps.sleep, clock=cms_sleeps.monotonic)
    await pacer.wait()
    assert cms_sleeps.delays == []  # nothing to wait for yet
    pacer.pause(7)
    pacer.pause(2)  # a shorter pause never shortens a longer one
    await pacer.wait()
    assert cms_sleeps.delays == [7]
    await pacer.wait()
    assert cms_sleeps.delays == [7]  # the clock has passed the pause


async def test_a_failing_page_fails_the_pull_and_nothing_is_forwarded(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, cms_sleeps: SleepRecorder
) -> None:
    claims = [make_eob(n) for n in range(200)]
    pages = cms_pages(EOB, claims)

    def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        if start == 100:
            return fhir_response({"detail": "A failure occurred contacting the upstream server"}, 502)
        return fhir_response(pages[start // 50])

    cms_mock.get(EOB).mock(side_effect=answer)
    response = await client.get("/bluebutton/fhir", params={"resource_type": EOB}, headers=TOKEN_HEADER)
    assert response.status_code == 502
    assert "Blue Button" in outcome_issues(response)[0]["diagnostics"]
    assert connect.route.call_count == 0


async def test_no_total_falls_back_to_following_next(cms_mock: respx.MockRouter) -> None:
    claims = [make_eob(n) for n in range(120)]
    pages: list[dict[str, Any]] = cms_pages(EOB, claims, with_total=False)
    route = cms_mock.get(EOB).mock(
        side_effect=lambda request: fhir_response(pages[int(request.url.params.get("startIndex", "0")) // 50])
    )
    async with cms_client() as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]
    # Sequential: every page URL is exactly the previous page's `next`.
    assert [str(call.request.url) for call in route.calls[1:]] == [page_url(EOB, 50), page_url(EOB, 100)]
