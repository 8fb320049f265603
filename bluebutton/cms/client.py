"""Blue Button 2.0 FHIR client: search with paging, retries, and translation of CMS's errors.

The caller's access token travels per request, never as a client default, and only ever to the
configured CMS origin under its FHIR base: which links may be followed, and which would fetch a
page twice, is `paging.py`'s to say.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from bluebutton.cms.paging import PageLog, check_link
from bluebutton.cms.rate_limit import RateLimitPacer
from bluebutton.cms.search_page import Page, parse_page
from bluebutton.errors import (
    CmsBadRequestError,
    CmsError,
    CmsForbiddenError,
    CmsMalformedPageError,
    CmsNotFoundError,
    CmsProtocolError,
    CmsRateLimitedError,
    CmsTimeoutError,
    CmsUnauthorizedError,
    CmsUnavailableError,
    CmsUnexpectedStatusError,
    InvalidQueryError,
    TransientUpstreamError,
)
from bluebutton.fhir.bundles import FHIR_JSON
from bluebutton.outbound.client import UpstreamClient, Wrap, build_client
from bluebutton.outbound.responses import read_error_body, release
from bluebutton.outbound.retry import Clock, Sleep, backoff_delay, retry_after_seconds
from bluebutton.settings import Settings

# GETs are idempotent: these answers (and transport failures) are worth another try; they become
# the `TransientUpstreamError`s below, which is what the retry loop tests.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


class Pacer:
    """Shared by the requests of one pull: after a 429, none of them starts before it is time."""

    def __init__(self, sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic) -> None:
        self._sleep = sleep
        self._clock = clock
        self._resume_at = 0.0

    def pause(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, self._clock() + seconds)

    async def wait(self) -> None:
        delay = self._resume_at - self._clock()
        if delay > 0:
            await self._sleep(delay)


class CmsClient(UpstreamClient):
    """One shared client for the Blue Button FHIR API; it owns (and closes) its HTTP client, which
    the OAuth client borrows for CMS's token endpoints.

    `sleep` and `clock` are what retries and pacing wait with and measure by, `wall_clock` what a
    `Retry-After` date is read against (tests pass virtual clocks)."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        super().__init__(http)
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._base = httpx.URL(settings.cms_fhir_base)
        # One for the process: CMS's budget is per token, whichever pull spends it (rate_limit.py).
        self.rate_limit = RateLimitPacer(settings.cms_fetch_concurrency, sleep, clock)

    @classmethod
    def create(
        cls,
        settings: Settings,
        context: ssl.SSLContext,
        *,
        wrap: Wrap | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> CmsClient:
        http = build_client(
            base_url=settings.cms_origin,
            context=context,
            timeout=settings.cms_timeout_seconds,
            max_connections=max(8, settings.cms_fetch_concurrency * 2),
            wrap=wrap,
        )
        return cls(settings, http, sleep=sleep, clock=clock, wall_clock=wall_clock)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._client

    def pacer(self) -> Pacer:
        return Pacer(self._sleep, self._clock)

    def base(self, version: int | None = None) -> httpx.URL:
        """The FHIR base of an API version (default: `BLUEBUTTON_CMS_API_VERSION`)."""
        return self._base if version is None else httpx.URL(self._settings.fhir_base(version))

    def search_params(
        self, resource_type: str, params: list[tuple[str, str]], version: int | None
    ) -> list[tuple[str, str]]:
        """The search as sent: on v3, `BLUEBUTTON_CMS_INCLUDE_NOT_FINAL` asks for the shared-system
        claims CMS leaves out by default (`_source=NCH,DDPS` unless `_source`/`_tag` is given,
        WS `ba0c6856a`, bb2-v3.md §4)."""
        version = self._settings.cms_api_version if version is None else version
        named = {name for name, _ in params}
        if (
            version == 3
            and resource_type == "ExplanationOfBenefit"
            and self._settings.cms_include_not_final
            and not named & {"_source", "_tag"}
        ):
            return [*params, ("_source", "NCH,DDPS,FISS,MCS,VMS")]
        return params

    async def iter_pages(
        self, resource_type: str, params: list[tuple[str, str]], token: str, version: int | None = None
    ) -> AsyncIterator[Page]:
        """Yield every page of a search in CMS order.

        On v2, after the first page has told the `total`, the remaining pages are asked for at
        once by `startIndex`, a few at a time. On v3 `total` is absent until the last page and then
        counts only that page (BFD `EobHandler`, bb2-v3.md §4), so a v3 pull, like any without a
        usable total or index, follows `link[relation=next]` page by page. `paging.PageLog`
        refuses any link back to a page already fetched.
        """
        version = self._settings.cms_api_version if version is None else version
        base = self.base(version)
        params = self.search_params(resource_type, params, version)
        pacer = self.pacer()
        log = PageLog(self._settings.cms_max_pages)
        url: httpx.URL = base.join(resource_type)
        first = await self.get_page(url, params, token, pacer)
        first_link = url.copy_merge_params(tuple(params))  # sendable: it was just sent
        log.claim(first_link, default_index=0)
        log.fetched(first_link, first)
        yield first
        planned: list[httpx.URL] = []
        if first.next_url is not None and version == 2:
            planned = log.plan(first, check_link(base, first.next_url))
        last = first
        async for link, page in self._fetch_concurrently(planned, token, pacer):
            log.fetched(link, page)
            last = page
            yield page
        # Follow `next` from the last page we have (all of them, when there was no plan; any
        # left over, when the search grew while we were pulling).
        while (next_url := last.next_url) is not None:
            link = check_link(base, next_url)
            log.claim(link)
            last = await self.get_page(link, None, token, pacer)
            log.fetched(link, last)
            yield last

    async def _fetch_concurrently(
        self, links: list[httpx.URL], token: str, pacer: Pacer
    ) -> AsyncIterator[tuple[httpx.URL, Page]]:
        """Fetch pages with bounded concurrency and yield them in order; any failure ends it."""
        limit = asyncio.Semaphore(self._settings.cms_fetch_concurrency)

        async def fetch(link: httpx.URL) -> Page:
            async with limit:
                return await self.get_page(link, None, token, pacer)

        tasks = [asyncio.ensure_future(fetch(link)) for link in links]
        try:
            for link, task in zip(links, tasks, strict=True):
                yield link, await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def get_page(
        self,
        url: httpx.URL | str,
        params: list[tuple[str, str]] | None,
        token: str,
        pacer: Pacer | None = None,
    ) -> Page:
        """GET one search page, retrying transient failures with backoff and `Retry-After`."""
        settings = self._settings
        pacer = pacer or self.pacer()
        deadline = self._clock() + settings.cms_retry_budget_seconds
        attempts = settings.cms_retry_attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            await pacer.wait()
            await self.rate_limit.wait(token)
            try:
                response = await self._client.get(
                    url,
                    params=httpx.QueryParams(tuple(params)) if params else None,
                    headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON},
                )
            except httpx.InvalidURL as e:
                raise _unsendable(e, from_caller=params is not None) from e
            except httpx.TimeoutException as e:
                failure: CmsError = CmsTimeoutError(
                    f"Blue Button did not answer within {settings.cms_timeout_seconds:g} s "
                    f"({attempt} attempt(s))"
                )
                cause: BaseException = e
            except httpx.TransportError as e:
                failure = CmsUnavailableError(
                    f"could not reach Blue Button at {settings.cms_origin} "
                    f"({type(e).__name__}, {attempt} attempt(s))"
                )
                cause = e
            else:
                self.rate_limit.observe(token, response.headers)
                try:
                    if response.status_code == 200:
                        try:
                            return parse_page(response.content)
                        except CmsError as e:
                            failure, cause = e, e
                    else:
                        retry_after = retry_after_seconds(response, self._wall_clock())
                        failure = _status_error(response, attempt, retry_after)
                        cause = failure
                finally:
                    release(response)
            if not isinstance(failure, TransientUpstreamError):
                raise failure
            delay = backoff_delay(attempt, settings.cms_retry_backoff_seconds)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
            if attempt == attempts or self._clock() + delay > deadline:
                raise failure from cause
            if retry_after is not None:
                pacer.pause(delay)  # a 429 slows the whole pull, not just this page
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_userinfo(self, token: str, version: int | None = None) -> dict[str, Any]:
        """The beneficiary's profile (`/v{n}/connect/userinfo`, bb2-api.md §2.12), as the CMS SDK
        reads it: the same origin, TLS and error translation as the FHIR searches; one attempt
        (it is one small GET that a caller can repeat)."""
        settings = self._settings
        version = settings.cms_api_version if version is None else version
        url = f"{settings.cms_origin}/v{version}/connect/userinfo"
        try:
            response = await self._client.get(
                url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
            )
        except httpx.TimeoutException as e:
            raise CmsTimeoutError(
                f"Blue Button did not answer within {settings.cms_timeout_seconds:g} s"
            ) from e
        except httpx.TransportError as e:
            raise CmsUnavailableError(
                f"could not reach Blue Button at {settings.cms_origin} ({type(e).__name__})"
            ) from e
        try:
            if response.status_code == 403:
                raise CmsForbiddenError(
                    "Blue Button refused the profile: the token has no `profile` scope (the "
                    "beneficiary chose not to share demographic data, or BLUEBUTTON_CMS_SCOPES does "
                    "not ask for it). Coverage and ExplanationOfBenefit still work; to read the "
                    "profile, authorize again and share demographic data.",
                    upstream_status=403,
                    detail=read_error_body(response).detail,
                )
            if response.status_code != 200:
                raise _status_error(response, 1, retry_after_seconds(response, self._wall_clock()))
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                raise CmsMalformedPageError("Blue Button's userinfo answer is not a JSON object")
            return body
        finally:
            release(response)


def _unsendable(error: httpx.InvalidURL, *, from_caller: bool) -> InvalidQueryError | CmsProtocolError:
    """httpx refuses to build the request (e.g. a query past its 64 KB limit): the caller's query
    is a 4xx to narrow it; a paging link is Blue Button's fault. httpx names the part, not the value."""
    if from_caller:
        return InvalidQueryError(
            f"the Blue Button search cannot be sent: {error}; narrow the query (fewer or shorter parameters)"
        )
    return CmsProtocolError(f"Blue Button returned a paging link that cannot be requested: {error}")


def _status_error(response: httpx.Response, attempt: int, retry_after: float | None) -> CmsError:
    status = response.status_code
    detail = read_error_body(response).detail
    if status == 401:
        return CmsUnauthorizedError(
            "Blue Button refused the access token: it is expired or revoked, the beneficiary's "
            "grant has ended, or a newer authorization of the same beneficiary ends its earlier "
            "tokens (use the newest). Refresh it (POST /bluebutton/refresh) or re-authorize "
            "(GET /bluebutton/authorize).",
            upstream_status=status,
            detail=detail,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if status == 403:
        return CmsForbiddenError(
            "Blue Button refused access: the token lacks the scope for this resource (a "
            "beneficiary who declined to share demographic data gives no patient/Patient.read, so "
            "Patient is refused while Coverage and ExplanationOfBenefit still work), or `patient` "
            "is not the token's beneficiary (omit it, or use the token response's `patient`).",
            upstream_status=status,
            detail=detail,
        )
    if status == 404:
        return CmsNotFoundError(
            "Blue Button found no such resource for this beneficiary",
            upstream_status=status,
            detail=detail,
        )
    if status == 429:
        return CmsRateLimitedError(
            f"Blue Button is rate-limiting this token ({attempt} attempt(s)); retry later",
            upstream_status=429,
            detail=detail,
            headers={"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {},
        )
    if status == 400:
        return CmsBadRequestError("Blue Button rejected the search", upstream_status=status, detail=detail)
    message = f"Blue Button failed with HTTP {status} ({attempt} attempt(s))"
    if status in RETRYABLE_STATUSES:
        return CmsUnavailableError(message, upstream_status=status, detail=detail)
    return CmsUnexpectedStatusError(message, upstream_status=status, detail=detail)
