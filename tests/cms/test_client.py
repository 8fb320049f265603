"""The Blue Button client: paging (by index and by `next`), link checks, retries, error translation."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import respx

import bluebutton.cms.client
import bluebutton.outbound.retry
from bluebutton.cms.client import CmsClient
from bluebutton.errors import (
    CmsBadRequestError,
    CmsError,
    CmsForbiddenError,
    CmsNotFoundError,
    CmsProtocolError,
    CmsRateLimitedError,
    CmsTimeoutError,
    CmsUnauthorizedError,
    CmsUnavailableError,
    InvalidQueryError,
)
from bluebutton.outbound.client import build_client
from bluebutton.outbound.retry import backoff_delay
from tests.cms.test_paging import LINKS_REFUSED
from tests.factories import (
    FHIR_BASE,
    PATIENT_ID,
    TOKEN,
    cms_page,
    cms_pages,
    fhir_response,
    make_eob,
    make_settings,
    page_url,
)
from tests.fakes import SleepRecorder, serve_pages
from tests.running import CMS_TIME, CONTEXT, EOB, cms_client, ids, pull_pages

# ------------------------------------------------------------------------------------------- paging


@pytest.mark.parametrize("with_total", [pytest.param(True, id="by-index"), pytest.param(False, id="by-next")])
async def test_every_page_in_cms_order(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, with_total: bool
) -> None:
    claims = [make_eob(n) for n in range(130)]
    pages = cms_pages(EOB, claims, with_total=with_total)
    route = serve_pages(cms_mock, EOB, pages)
    async with cms_client() as cms:
        got = await pull_pages(cms, [("_count", "50"), ("patient", "-1")])
    assert ids(got) == [c["id"] for c in claims]
    assert route.call_count == 3
    first = route.calls[0].request
    assert first.url.params.multi_items() == [("_count", "50"), ("patient", "-1")]
    starts = sorted(int(c.request.url.params.get("startIndex", "0")) for c in route.calls)
    assert starts == [0, 50, 100]
    for call in route.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.request.headers["Accept"] == "application/fhir+json"
        assert call.request.url.host == "cms.test"


async def test_pages_fetched_concurrently_are_still_yielded_in_order(cms_mock: respx.MockRouter) -> None:
    """Page 2 answers only once page 3 has been asked for: without concurrency this would hang."""
    claims = [make_eob(n) for n in range(150)]
    pages = cms_pages(EOB, claims)
    third_asked = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        if start == 100:
            third_asked.set()
        if start == 50:
            await asyncio.wait_for(third_asked.wait(), timeout=10)
        return fhir_response(pages[start // 50])

    cms_mock.get(EOB).mock(side_effect=answer)
    async with cms_client(cms_fetch_concurrency=4) as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]


async def test_relative_next_link_is_followed(cms_mock: respx.MockRouter) -> None:
    page1 = cms_page([make_eob(1)], next_url="ExplanationOfBenefit?cursor=abc")
    page2 = cms_page([make_eob(2)])
    route = cms_mock.get(EOB).mock(
        side_effect=lambda r: fhir_response(page2 if r.url.params.get("cursor") else page1)
    )
    async with cms_client() as cms:
        got = await pull_pages(cms)
    assert ids(got) == [make_eob(1)["id"], make_eob(2)["id"]]
    assert route.calls[1].request.url == httpx.URL(f"{FHIR_BASE}ExplanationOfBenefit?cursor=abc")


async def test_v3_pages_by_offset(cms_mock: respx.MockRouter) -> None:
    claims = [make_eob(n) for n in range(70)]
    first = cms_page(
        claims[:50], total=70, next_url="https://cms.test/v3/fhir/ExplanationOfBenefit?_offset=50&_count=50"
    )
    second = cms_page(claims[50:], total=70)
    with respx.mock(base_url="https://cms.test/v3/fhir/", assert_all_called=False) as v3:
        route = v3.get(EOB).mock(
            side_effect=lambda r: fhir_response(second if r.url.params.get("_offset") == "50" else first)
        )
        async with cms_client(cms_api_version=3) as cms:
            got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]
    assert [c.request.url.path for c in route.calls] == ["/v3/fhir/ExplanationOfBenefit"] * 2


@pytest.mark.parametrize(
    "with_total", [pytest.param(True, id="first-page"), pytest.param(False, id="by-next")]
)
@pytest.mark.parametrize("link", LINKS_REFUSED)
async def test_hostile_next_stops_the_pull_without_sending_the_token(
    cms_mock: respx.MockRouter, elsewhere: respx.Route, link: str, with_total: bool
) -> None:
    page1 = cms_page([make_eob(1)], total=2 if with_total else None, next_url=link)
    route = cms_mock.get(EOB).mock(return_value=fhir_response(page1))
    async with cms_client() as cms:
        with pytest.raises(CmsProtocolError) as info:
            await pull_pages(cms)
    assert info.value.status_code == 502
    assert route.call_count == 1
    assert not elsewhere.called
    assert TOKEN not in str(info.value)
    assert all(not c.request.headers["Authorization"].startswith("Basic") for c in route.calls)


async def test_hostile_next_on_a_later_page(cms_mock: respx.MockRouter, elsewhere: respx.Route) -> None:
    page1 = cms_page([make_eob(1)], next_url=page_url(EOB, 1, 1))
    page2 = cms_page(
        [make_eob(2)], self_url=page_url(EOB, 1, 1), next_url="https://evil.test/v2/fhir/EOB?x=1"
    )
    serve_pages(cms_mock, EOB, [page1, page2])
    async with cms_client() as cms:
        with pytest.raises(CmsProtocolError):
            await pull_pages(cms)
    assert not elsewhere.called


@pytest.mark.parametrize("with_total", [pytest.param(True, id="by-index"), pytest.param(False, id="by-next")])
async def test_repeating_link_is_detected(cms_mock: respx.MockRouter, with_total: bool) -> None:
    total = 2 if with_total else None
    page1 = cms_page([make_eob(1)], total=total, self_url=page_url(EOB, 0, 1), next_url=page_url(EOB, 1, 1))
    page2 = cms_page([make_eob(2)], total=total, self_url=page_url(EOB, 1, 1), next_url=page_url(EOB, 1, 1))
    route = serve_pages(cms_mock, EOB, [page1, page2])
    async with cms_client() as cms:
        with pytest.raises(CmsProtocolError, match="repeat"):
            await pull_pages(cms)
    assert route.call_count <= 3


async def test_link_back_to_the_first_page_is_detected(cms_mock: respx.MockRouter) -> None:
    page1 = cms_page([make_eob(1)], self_url=page_url(EOB, 0, 1), next_url=page_url(EOB, 1, 1))
    page2 = cms_page([make_eob(2)], self_url=page_url(EOB, 1, 1), next_url=page_url(EOB, 0, 1))
    route = serve_pages(cms_mock, EOB, [page1, page2])
    async with cms_client() as cms:
        with pytest.raises(CmsProtocolError, match="repeat"):
            await pull_pages(cms)
    assert route.call_count <= 4


def _with_next(page: dict[str, Any], url: str) -> dict[str, Any]:
    links = [link for link in page["link"] if link["relation"] != "next"]
    return {**page, "link": [*links, {"relation": "next", "url": url}]}


async def _pull_until_refused(cms: CmsClient, params: list[tuple[str, str]]) -> tuple[list[str], str]:
    """The ids of the entries yielded before the pull stopped, and why it stopped."""
    got: list[str] = []
    with pytest.raises(CmsProtocolError) as info:
        async for page in cms.iter_pages(EOB, params, TOKEN):
            got += [orjson.loads(entry)["resource"]["id"] for entry in page.entries]
    assert info.value.status_code == 502
    return got, info.value.message


BACK_TO_THE_FIRST_PAGE = [
    pytest.param(
        f"{FHIR_BASE}{EOB}?patient={PATIENT_ID}&_count=50&startIndex=0&_format=application%2Fjson%2Bfhir",
        id="reordered",
    ),
    pytest.param(f"{FHIR_BASE}{EOB}/?_count=50&startIndex=0&patient={PATIENT_ID}", id="trailing-slash"),
    pytest.param(f"{EOB}?patient={PATIENT_ID}&_count=50", id="first-request-reordered-no-index"),
    pytest.param(page_url(EOB, 25), id="inside-the-first-page"),
    pytest.param(page_url(EOB, 110), id="inside-a-later-page"),
]


@pytest.mark.parametrize("with_total", [pytest.param(True, id="by-index"), pytest.param(False, id="by-next")])
@pytest.mark.parametrize("back", BACK_TO_THE_FIRST_PAGE)
async def test_next_back_to_a_fetched_page_is_refused_before_fetching_it(
    cms_mock: respx.MockRouter, with_total: bool, back: str
) -> None:
    """155 claims in 4 pages, the last one's `next` leading back: 155 entries, not 205."""
    claims = [make_eob(n) for n in range(155)]
    pages = cms_pages(EOB, claims, with_total=with_total)
    pages[-1] = _with_next(pages[-1], back)
    route = serve_pages(cms_mock, EOB, pages)
    async with cms_client() as cms:
        got, message = await _pull_until_refused(cms, [("_count", "50"), ("patient", PATIENT_ID)])
    assert got == [c["id"] for c in claims]
    assert route.call_count == 4
    assert "repeat" in message
    assert "already fetched" in message


async def test_every_next_link_reordered_is_still_one_pass(cms_mock: respx.MockRouter) -> None:
    """CMS may order a link's parameters as it likes: only a page already fetched stops the pull."""
    claims = [make_eob(n) for n in range(155)]
    pages = cms_pages(EOB, claims, with_total=False)

    def reordered(start: int) -> str:
        return f"{FHIR_BASE}{EOB}?patient={PATIENT_ID}&startIndex={start}&_count=50"

    pages = [_with_next(page, reordered(50 * (n + 1))) for n, page in enumerate(pages[:-1])] + [
        _with_next(pages[-1], reordered(0))
    ]
    route = serve_pages(cms_mock, EOB, pages)
    async with cms_client() as cms:
        got, message = await _pull_until_refused(cms, [("_count", "50"), ("patient", PATIENT_ID)])
    assert got == [c["id"] for c in claims]
    assert route.call_count == 4
    assert "index 0" in message


@pytest.mark.parametrize("with_total", [pytest.param(True, id="by-index"), pytest.param(False, id="by-next")])
async def test_page_bound(cms_mock: respx.MockRouter, with_total: bool) -> None:
    claims = [make_eob(n) for n in range(8)]
    route = serve_pages(cms_mock, EOB, cms_pages(EOB, claims, per_page=2, with_total=with_total))
    async with cms_client(cms_max_pages=3) as cms:
        with pytest.raises(CmsProtocolError, match="BLUEBUTTON_CMS_MAX_PAGES"):
            await pull_pages(cms)
    assert route.call_count <= 3


async def test_a_hostile_total_is_refused_by_the_page_bound(cms_mock: respx.MockRouter) -> None:
    page1 = cms_page([make_eob(n) for n in range(50)], total=10**15, next_url=page_url(EOB, 50))
    route = cms_mock.get(EOB).mock(return_value=fhir_response(page1))
    async with cms_client(cms_max_pages=3) as cms:
        with pytest.raises(CmsProtocolError, match="BLUEBUTTON_CMS_MAX_PAGES"):
            await pull_pages(cms)
    assert route.call_count == 1


@pytest.mark.parametrize("with_total", [pytest.param(True, id="by-index"), pytest.param(False, id="by-next")])
async def test_exactly_max_pages_is_fine(cms_mock: respx.MockRouter, with_total: bool) -> None:
    claims = [make_eob(n) for n in range(6)]
    route = serve_pages(cms_mock, EOB, cms_pages(EOB, claims, per_page=2, with_total=with_total))
    async with cms_client(cms_max_pages=3) as cms:
        got = await pull_pages(cms)
    assert ids(got) == [c["id"] for c in claims]
    assert route.call_count == 3


# ----------------------------------------------------------------------------- URLs httpx refuses


async def test_a_query_httpx_cannot_send_is_the_callers_4xx(
    cms_mock: respx.MockRouter, elsewhere: respx.Route
) -> None:
    """httpx refuses a query past 64 KB (`InvalidURL`): the caller's 422, not a bare 500."""
    route = cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)])))
    async with cms_client() as cms:
        with pytest.raises(InvalidQueryError) as info:
            await pull_pages(cms, [("_count", "50"), ("type", "carrier," * 9000)])
    assert 400 <= info.value.status_code < 500
    assert "too long" in info.value.message
    assert "narrow" in info.value.message
    assert isinstance(info.value.__cause__, httpx.InvalidURL)
    assert not route.called
    assert not elsewhere.called


async def test_a_link_httpx_cannot_send_is_blue_buttons_fault(
    cms_mock: respx.MockRouter, elsewhere: respx.Route
) -> None:
    route = cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)])))
    async with cms_client() as cms:
        with pytest.raises(CmsProtocolError) as info:
            await cms.get_page(f"{EOB}?cursor={'a' * 70_000}", None, TOKEN)
    assert info.value.status_code == 502
    assert "paging link" in info.value.message
    assert not route.called
    assert not elsewhere.called


# ------------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_retryable_status_is_retried_then_succeeds(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, status: int
) -> None:
    page = cms_page([make_eob(1)])
    route = cms_mock.get(EOB).mock(
        side_effect=[fhir_response({"detail": "busy"}, status)] * 3 + [fhir_response(page)]
    )
    async with cms_client(cms_retry_attempts=4) as cms:
        got = await pull_pages(cms)
    assert ids(got) == [make_eob(1)["id"]]
    assert route.call_count == 4
    assert len(cms_sleeps.delays) == 3


async def test_every_response_is_released(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[int] = []
    monkeypatch.setattr(
        bluebutton.cms.client, "release", lambda response: released.append(response.status_code)
    )
    page = cms_page([make_eob(1)])
    route = cms_mock.get(EOB).mock(side_effect=[fhir_response({}, 503), fhir_response(page)])
    async with cms_client() as cms:
        await pull_pages(cms)
        with pytest.raises(CmsNotFoundError):
            route.side_effect = [fhir_response({}, 404)]
            await pull_pages(cms)
    assert released == [503, 200, 404]


@pytest.mark.parametrize(
    ("status", "error", "answer"),
    [
        pytest.param(429, CmsRateLimitedError, 429, id="429"),
        pytest.param(500, CmsUnavailableError, 502, id="500"),
        pytest.param(502, CmsUnavailableError, 502, id="502"),
        pytest.param(503, CmsUnavailableError, 502, id="503"),
        pytest.param(504, CmsUnavailableError, 502, id="504"),
    ],
)
async def test_retryable_status_gives_up_after_the_attempts(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, status: int, error: type[CmsError], answer: int
) -> None:
    route = cms_mock.get(EOB).mock(return_value=fhir_response({"detail": "try later"}, status))
    async with cms_client(cms_retry_attempts=3) as cms:
        with pytest.raises(error) as info:
            await pull_pages(cms)
    assert route.call_count == 3
    assert info.value.status_code == answer
    assert info.value.upstream_status == status
    assert info.value.detail == "try later"


@pytest.mark.parametrize(
    ("failure", "error", "answer"),
    [
        pytest.param(httpx.ConnectError("refused"), CmsUnavailableError, 502, id="ConnectError"),
        pytest.param(httpx.ReadError("reset"), CmsUnavailableError, 502, id="ReadError"),
        pytest.param(httpx.RemoteProtocolError("eof"), CmsUnavailableError, 502, id="RemoteProtocolError"),
        pytest.param(httpx.ConnectTimeout("slow"), CmsTimeoutError, 504, id="ConnectTimeout"),
        pytest.param(httpx.ReadTimeout("slow"), CmsTimeoutError, 504, id="ReadTimeout"),
    ],
)
async def test_transport_errors_are_retried(
    cms_mock: respx.MockRouter,
    cms_sleeps: SleepRecorder,
    failure: Exception,
    error: type[CmsError],
    answer: int,
) -> None:
    route = cms_mock.get(EOB).mock(side_effect=failure)
    async with cms_client(cms_retry_attempts=4) as cms:
        with pytest.raises(error) as info:
            await pull_pages(cms)
    assert route.call_count == 4
    assert info.value.status_code == answer
    assert isinstance(info.value.__cause__, httpx.TransportError)


async def test_transport_error_then_success(cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder) -> None:
    route = cms_mock.get(EOB).mock(
        side_effect=[httpx.ConnectError("refused"), fhir_response(cms_page([make_eob(1)]))]
    )
    async with cms_client() as cms:
        got = await pull_pages(cms)
    assert len(ids(got)) == 1
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(400, CmsBadRequestError, id="400"),
        pytest.param(401, CmsUnauthorizedError, id="401"),
        pytest.param(403, CmsForbiddenError, id="403"),
        pytest.param(404, CmsNotFoundError, id="404"),
    ],
)
async def test_client_errors_are_not_retried(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, status: int, error: type[CmsError]
) -> None:
    route = cms_mock.get(EOB).mock(return_value=fhir_response({"detail": "No."}, status))
    async with cms_client(cms_retry_attempts=4) as cms:
        with pytest.raises(error) as info:
            await pull_pages(cms)
    assert route.call_count == 1
    assert cms_sleeps.delays == []
    assert info.value.status_code == status
    assert info.value.detail == "No."


async def test_retry_after_is_honoured(cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder) -> None:
    throttled = httpx.Response(429, json={"detail": "Request was throttled."}, headers={"Retry-After": "7"})
    route = cms_mock.get(EOB).mock(side_effect=[throttled, throttled, fhir_response(cms_page([make_eob(1)]))])
    async with cms_client(cms_retry_backoff_seconds=0.5) as cms:
        await pull_pages(cms)
    assert route.call_count == 3
    assert cms_sleeps.delays == [7.0, 7.0]


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(CMS_TIME.time() + seconds_from_now, usegmt=True)


async def test_retry_after_as_an_http_date_is_honoured(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder
) -> None:
    """The date is read against the client's wall clock (virtual here), which the sleep moves on."""

    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={}, headers={"Retry-After": _http_date(12)})

    answers = iter([throttled, throttled, lambda r: fhir_response(cms_page([make_eob(1)]))])
    route = cms_mock.get(EOB).mock(side_effect=lambda r: next(answers)(r))
    async with cms_client(cms_retry_backoff_seconds=0.5) as cms:
        await pull_pages(cms)
    assert route.call_count == 3
    assert cms_sleeps.delays == [12.0, 12.0]


@pytest.mark.parametrize(
    "value",
    [pytest.param("100", id="delay-seconds"), pytest.param(lambda: _http_date(100), id="http-date")],
)
async def test_retry_after_is_capped(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, value: str | Callable[[], str]
) -> None:
    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={}, headers={"Retry-After": value if isinstance(value, str) else value()}
        )

    route = cms_mock.get(EOB).mock(
        side_effect=[throttled(httpx.Request("GET", "/")), fhir_response(cms_page([make_eob(1)]))]
    )
    async with cms_client(cms_retry_budget_seconds=300) as cms:
        await pull_pages(cms)
    assert route.call_count == 2
    assert cms_sleeps.delays == [bluebutton.cms.client.MAX_RETRY_AFTER]


async def test_retry_after_http_date_is_passed_on_in_seconds(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder
) -> None:
    throttled = httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": _http_date(3600)})
    cms_mock.get(EOB).mock(return_value=throttled)
    async with cms_client(cms_retry_budget_seconds=30) as cms:
        with pytest.raises(CmsRateLimitedError) as info:
            await pull_pages(cms)
    assert cms_sleeps.delays == []
    assert info.value.headers["Retry-After"] == "3600"


@pytest.mark.parametrize("value", ["inf", "1e400", "9" * 400, "nan", "-1"])
async def test_unusable_retry_after_is_backoff_only(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, value: str
) -> None:
    throttled = httpx.Response(429, json={}, headers={"Retry-After": value})
    cms_mock.get(EOB).mock(return_value=throttled)
    async with cms_client(cms_retry_attempts=2, cms_retry_backoff_seconds=0.5) as cms:
        with pytest.raises(CmsRateLimitedError) as info:
            await pull_pages(cms)
    assert len(cms_sleeps.delays) == 1
    assert cms_sleeps.delays[0] <= 0.5
    assert "Retry-After" not in info.value.headers


async def test_retry_after_is_capped_by_the_budget(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder
) -> None:
    throttled = httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "3600"})
    route = cms_mock.get(EOB).mock(return_value=throttled)
    async with cms_client(cms_retry_budget_seconds=30) as cms:
        with pytest.raises(CmsRateLimitedError) as info:
            await pull_pages(cms)
    assert route.call_count == 1
    assert cms_sleeps.delays == []
    assert info.value.headers["Retry-After"] == "3600"


async def test_total_retry_time_is_bounded(cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder) -> None:
    throttled = httpx.Response(429, json={}, headers={"Retry-After": "10"})
    route = cms_mock.get(EOB).mock(return_value=throttled)
    async with cms_client(cms_retry_attempts=10, cms_retry_budget_seconds=25) as cms:
        with pytest.raises(CmsRateLimitedError):
            await pull_pages(cms)
    assert route.call_count == 3
    assert sum(cms_sleeps.delays) <= 25


async def test_backoff_is_exponential(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TopOfRange:
        @staticmethod
        def uniform(low: float, high: float) -> float:
            return high

    monkeypatch.setattr(bluebutton.outbound.retry, "random", TopOfRange)
    cms_mock.get(EOB).mock(return_value=fhir_response({}, 503))
    async with cms_client(
        cms_retry_attempts=4, cms_retry_backoff_seconds=1.0, cms_retry_budget_seconds=100
    ) as cms:
        with pytest.raises(CmsUnavailableError):
            await pull_pages(cms)
    assert cms_sleeps.delays == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
def test_backoff_delay_has_jitter_within_bounds(attempt: int) -> None:
    delays = [backoff_delay(attempt, 0.5) for _ in range(200)]
    assert all(0 <= d <= min(10.0, 0.5 * 2 ** (attempt - 1)) for d in delays)
    assert len(set(delays)) > 1


# ---------------------------------------------------------------------------------- bodies of 200s


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>not json</html>", id="html"),
        pytest.param(b'{"resourceType": "Bundle", "entry": [', id="truncated"),
        pytest.param(orjson.dumps({"resourceType": "OperationOutcome", "issue": []}), id="OperationOutcome"),
        pytest.param(orjson.dumps([1, 2]), id="array"),
        pytest.param(
            orjson.dumps({"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]}), id="entry-no-resource"
        ),
        pytest.param(
            orjson.dumps({"resourceType": "Bundle", "entry": {"resource": {}}}), id="entry-not-list"
        ),
        pytest.param(orjson.dumps({"resourceType": "Bundle", "entry": None}), id="entry-null"),
        pytest.param(orjson.dumps({"resourceType": "Bundle", "entry": [[1]]}), id="entry-not-object"),
        pytest.param(
            orjson.dumps({"resourceType": "Bundle", "entry": [{"resource": [1]}]}), id="resource-not-object"
        ),
        pytest.param(b'{"resourceType": "Bundle", "entry": [{"resource": {"a": 1,}}]}', id="bad-entry"),
    ],
)
async def test_malformed_200_is_a_protocol_error(
    cms_mock: respx.MockRouter, cms_sleeps: SleepRecorder, body: bytes
) -> None:
    route = cms_mock.get(EOB).mock(return_value=httpx.Response(200, content=body))
    async with cms_client(cms_retry_attempts=2) as cms:
        with pytest.raises(CmsProtocolError) as info:
            await pull_pages(cms)
    assert info.value.status_code == 502
    assert "Blue Button" in str(info.value)
    assert route.call_count >= 1


async def test_entries_are_the_bytes_cms_sent(cms_mock: respx.MockRouter) -> None:
    """Entries are cut out of the page as they are, whatever its layout, and parsed nowhere here."""
    page = cms_page([make_eob(1), make_eob(2)], total=2)
    body = orjson.dumps(page, option=orjson.OPT_INDENT_2)
    cms_mock.get(EOB).mock(return_value=httpx.Response(200, content=body))
    async with cms_client() as cms:
        (got,) = await pull_pages(cms)
    assert [orjson.loads(entry) for entry in got.entries] == page["entry"]
    assert all(entry in body and entry.startswith(b"{\n") for entry in got.entries)
    assert got.total == 2
    assert got.next_url is None


async def test_error_messages_carry_hints(cms_mock: respx.MockRouter) -> None:
    cms_mock.get(EOB).mock(
        return_value=fhir_response({"detail": "Authentication credentials were not provided."}, 401)
    )
    async with cms_client() as cms:
        with pytest.raises(CmsUnauthorizedError) as info:
            await pull_pages(cms)
    text = " ".join(i.diagnostics for i in info.value.issues())
    assert "refresh" in text.lower()
    assert "authoriz" in text.lower()
    assert "Authentication credentials were not provided." in text


async def test_token_is_never_a_client_default(cms_mock: respx.MockRouter) -> None:
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)])))
    settings = make_settings()
    http = build_client(base_url=settings.cms_origin, context=CONTEXT, timeout=5)
    try:
        await pull_pages(CmsClient(settings, http))
        assert "authorization" not in {k.lower() for k in http.headers}
        assert http.follow_redirects is False
    finally:
        await http.aclose()
