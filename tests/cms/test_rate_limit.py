"""Pacing by X-RateLimit-Remaining/-Reset: the CMS client waits for the window instead of running
into 429s, for every pull of the process that uses the same token; virtual clock, no sleeping."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from bluebutton.cms.rate_limit import MAX_PAUSE, RateLimitPacer
from tests.factories import CMS_ORIGIN, TOKEN, cms_page, fhir_response, make_eob
from tests.fakes import SleepRecorder
from tests.running import CMS_TIME, EOB, cms_client, ids


def headers(remaining: str, reset: str) -> dict[str, str]:
    return {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": remaining, "X-RateLimit-Reset": reset}


async def test_no_pause_while_there_is_room() -> None:
    clock = SleepRecorder()
    pacer = RateLimitPacer(2, clock.sleep, clock.monotonic)
    assert pacer.observe("a", headers("3", "5.5")) == 0
    assert await pacer.wait("a") == 0 and clock.delays == []


async def test_low_remaining_pauses_that_token_until_the_reset() -> None:
    clock = SleepRecorder()
    pacer = RateLimitPacer(2, clock.sleep, clock.monotonic)
    assert pacer.observe("a", headers("2", "5.5")) == 5.5
    assert await pacer.wait("b") == 0  # CMS counts per token
    clock.now += 1.5
    assert await pacer.wait("a") == pytest.approx(4.0)
    assert await pacer.wait("a") == 0  # the window has moved on


@pytest.mark.parametrize(
    ("remaining", "reset", "pause"),
    [
        pytest.param("0", "3600", MAX_PAUSE, id="reset-capped"),
        pytest.param("x", "5", 0.0, id="remaining-not-a-number"),
        pytest.param("0", "nan", 0.0, id="reset-nan"),
        pytest.param("0", "-1", 0.0, id="reset-negative"),
        pytest.param("None", "None", 0.0, id="cms-none-outside-fhir-views"),
    ],
)
def test_odd_headers(remaining: str, reset: str, pause: float) -> None:
    assert RateLimitPacer(1).observe("a", headers(remaining, reset)) == pause


def test_no_headers_no_pause() -> None:
    assert RateLimitPacer(1).observe("a", {}) == 0


class SlidingWindowCms:
    """CMS's per-token throttle on the client's virtual clock: a 429 for a request past the limit."""

    def __init__(self, limit: int, window: float, pages: list[dict[str, object]]) -> None:
        self.limit, self.window, self.pages = limit, window, pages
        self.seen: dict[str, list[float]] = {}
        self.throttled = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = CMS_TIME.monotonic()
        token = request.headers["Authorization"]
        seen = [t for t in self.seen.get(token, []) if t > now - self.window]
        reset = (seen[0] + self.window - now) if seen else self.window
        if len(seen) >= self.limit:
            self.throttled += 1
            return httpx.Response(429, headers={"Retry-After": str(max(1, round(reset)))})
        seen.append(now)
        self.seen[token] = seen
        reset = seen[0] + self.window - now
        page = self.pages[int(request.url.params.get("_offset", "0")) // 10]
        response = fhir_response(page)
        response.headers.update(headers(str(self.limit - len(seen)), f"{reset:.3f}"))
        return response


def v3_pages(count: int) -> list[dict[str, object]]:
    claims = [make_eob(n) for n in range(count * 10)]
    return [
        cms_page(
            claims[n * 10 : n * 10 + 10],
            next_url=f"{CMS_ORIGIN}/v3/fhir/{EOB}?_count=10&_offset={n * 10 + 10}" if n + 1 < count else None,
        )
        for n in range(count)
    ]


async def test_a_pull_paces_itself_and_meets_no_429() -> None:
    cms = SlidingWindowCms(limit=5, window=10.0, pages=v3_pages(12))
    CMS_TIME.reset()
    with respx.mock(base_url=f"{CMS_ORIGIN}/v3/fhir/", assert_all_called=False) as router:
        router.get(EOB).mock(side_effect=cms)
        async with cms_client(cms_fetch_concurrency=1) as client:
            got = [p async for p in client.iter_pages(EOB, [("_count", "10")], TOKEN, version=3)]
    assert len(ids(got)) == 120
    assert cms.throttled == 0
    # Four requests, then the window's reset (10 s), and so on: 12 pages take 2 pauses.
    assert CMS_TIME.delays == [pytest.approx(10.0), pytest.approx(10.0)]


async def test_all_pulls_of_the_process_share_the_pause() -> None:
    cms = SlidingWindowCms(limit=3, window=8.0, pages=v3_pages(2))
    CMS_TIME.reset()
    with respx.mock(base_url=f"{CMS_ORIGIN}/v3/fhir/", assert_all_called=False) as router:
        route = router.get(EOB).mock(side_effect=cms)
        async with cms_client(cms_fetch_concurrency=1) as client:

            async def pull(token: str) -> int:
                pages = [p async for p in client.iter_pages(EOB, [("_count", "10")], token, version=3)]
                return sum(len(p.entries) for p in pages)

            assert await pull(TOKEN) == 20  # remaining 2, then 1: the token's window is spent
            sent = route.call_count
            other = asyncio.ensure_future(pull("another-token-0123456789"))
            same = asyncio.ensure_future(pull(TOKEN))
            assert await other == 20 and await same == 20
    assert cms.throttled == 0
    assert route.call_count == sent + 4
    assert CMS_TIME.delays == [pytest.approx(8.0)]  # only the second pull of the spent token waited
