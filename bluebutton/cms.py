"""Blue Button 2.0 FHIR client: search with paging, retries, and translation of CMS's errors.

The caller's access token travels per request, never as a client default, and only ever to the
configured CMS origin under its FHIR base: a `next` link anywhere else stops the pull (bb2-api.md
§3.2 says links point at the BB2 host; anything else is a bug or an attack).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

import httpx
import msgspec
import orjson

from bluebutton.bundles import FHIR_JSON
from bluebutton.errors import (
    CmsBadRequestError,
    CmsError,
    CmsForbiddenError,
    CmsNotFoundError,
    CmsProtocolError,
    CmsTimeoutError,
    CmsUnauthorizedError,
    CmsUnavailableError,
    rate_limited,
)
from bluebutton.outbound import backoff_delay, release
from bluebutton.settings import Settings

# GETs are idempotent: these answers (and transport failures) are worth another try.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_RETRY_AFTER = 60.0
# How a v2 (`startIndex`) or v3 (`_offset`) paging link says where its page starts.
INDEX_PARAMS = ("startIndex", "_offset")


@dataclass(frozen=True)
class Page:
    """One search page, reduced at once to what a pull needs: each entry's JSON bytes.

    The page is never parsed into Python objects (ten times its JSON size), so memory stays near
    the size of the data however many pages arrive at once.
    """

    entries: list[bytes]
    total: int | None
    next_url: str | None


def cms_detail(response: httpx.Response) -> str | None:
    """CMS's own explanation from a JSON error body (DRF `detail`, OAuth `error_description`, ...)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    if body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics", "")) for i in body.get("issue", []) if isinstance(i, dict)]
        text = "; ".join(t for t in texts if t)
    else:
        parts = [body.get(k) for k in ("error", "error_description", "detail", "message")]
        text = ": ".join(str(p) for p in parts if isinstance(p, str) and p)
    return text[:500] or None


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Pacer:
    """Shared by the requests of one pull: after a 429, none of them starts before it is time."""

    def __init__(self) -> None:
        self._resume_at = 0.0

    def pause(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    async def wait(self) -> None:
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _path_within(url: httpx.URL, base_path: str) -> bool:
    """Whether the path the server will see stays under `base_path`.

    Checked on the raw path too: an encoded `%2e%2e` or `%2f` segment would pass a check of the
    decoded path and still be resolved by the server to somewhere else (e.g. `/v2/o/token/`).
    """
    raw = url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
    if re.search(r"%2[fF]|%5[cC]|\\", raw):
        return False
    segments = unquote(raw).split("/")
    return ".." not in segments and "." not in segments and unquote(raw).startswith(base_path)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


class CmsClient:
    """One shared client for the Blue Button FHIR API."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._base = httpx.URL(settings.cms_fhir_base)

    def check_link(self, url: str) -> httpx.URL:
        """Refuse a paging link that leaves the CMS origin or its FHIR base path."""
        try:
            link = self._base.join(url)
        except httpx.InvalidURL as e:
            raise CmsProtocolError("Blue Button returned a malformed paging link") from e
        if _origin(link) != _origin(self._base) or not _path_within(link, self._base.path):
            raise CmsProtocolError(
                f"Blue Button returned a paging link to {link.scheme}://{link.host}{link.path}, "
                f"outside {self._settings.cms_fhir_base}; stopped without sending the token there"
            )
        return link

    async def iter_pages(
        self, resource_type: str, params: list[tuple[str, str]], token: str
    ) -> AsyncIterator[Page]:
        """Yield every page of a search in CMS order.

        After the first page has told the `total`, the remaining pages are asked for at once by
        index (`startIndex` in v2, `_offset` in v3), a few at a time; without a usable total or
        index the pull follows `link[relation=next]` page by page.
        """
        pacer = Pacer()
        url: httpx.URL = self._base.join(resource_type)
        first = await self.get_bundle(url, params, token, pacer)
        yield first
        seen = {str(url.copy_merge_params(tuple(params)))}
        planned = self._plan_pages(first)
        last = first
        if planned:
            for link in planned:
                seen.add(str(link))
            async for page in self._fetch_concurrently(planned, token, pacer):
                last = page
                yield page
        pages = 1 + len(planned)
        # Follow `next` from the last page we have (all of them, when there was no plan; any
        # left over, when the search grew while we were pulling).
        while (next_url := last.next_url) is not None:
            link = self.check_link(next_url)
            if str(link) in seen:
                raise CmsProtocolError("Blue Button's paging links repeat; stopped to avoid an endless pull")
            seen.add(str(link))
            pages += 1
            self._check_page_count(pages)
            last = await self.get_bundle(link, None, token, pacer)
            yield last

    def _check_page_count(self, pages: int) -> None:
        if pages > self._settings.cms_max_pages:
            raise CmsProtocolError(
                f"the search has more than {self._settings.cms_max_pages} pages "
                "(BLUEBUTTON_CMS_MAX_PAGES); narrow it with type, service_date or last_updated"
            )

    def _plan_pages(self, first: Page) -> list[httpx.URL]:
        """The URLs of pages 2..n by index, or [] when the first page does not allow it."""
        if first.next_url is None or first.total is None:
            return []
        link = self.check_link(first.next_url)
        names = [n for n in INDEX_PARAMS if n in link.params]
        if len(names) != 1:
            return []
        try:
            start = int(link.params[names[0]])
            size = int(link.params.get("_count", len(first.entries)))
        except ValueError:
            return []
        if size <= 0 or start <= 0 or start != len(first.entries):
            return []
        indices = range(start, first.total, size)
        self._check_page_count(1 + len(indices))
        return [link.copy_set_param(names[0], str(index)) for index in indices]

    async def _fetch_concurrently(
        self, links: list[httpx.URL], token: str, pacer: Pacer
    ) -> AsyncIterator[Page]:
        """Fetch pages with bounded concurrency and yield them in order; any failure ends it."""
        limit = asyncio.Semaphore(self._settings.cms_fetch_concurrency)

        async def fetch(link: httpx.URL) -> Page:
            async with limit:
                return await self.get_bundle(link, None, token, pacer)

        tasks = [asyncio.ensure_future(fetch(link)) for link in links]
        try:
            for task in tasks:
                yield await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def get_bundle(
        self,
        url: httpx.URL | str,
        params: list[tuple[str, str]] | None,
        token: str,
        pacer: Pacer | None = None,
    ) -> Page:
        """GET one search page, retrying transient failures with backoff and `Retry-After`."""
        settings = self._settings
        pacer = pacer or Pacer()
        deadline = time.monotonic() + settings.cms_retry_budget_seconds
        attempts = settings.cms_retry_attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            await pacer.wait()
            try:
                response = await self._client.get(
                    url,
                    params=httpx.QueryParams(tuple(params)) if params else None,
                    headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON},
                )
            except httpx.TimeoutException as e:
                failure: CmsError = CmsTimeoutError(
                    f"Blue Button did not answer within {settings.cms_timeout_seconds:g} s "
                    f"({attempt} attempt(s))"
                )
                cause: BaseException = e
            except httpx.TransportError as e:
                failure = CmsUnavailableError(
                    f"could not reach Blue Button at {settings.cms_origin} "
                    f"({type(e).__name__}, {attempt} attempt(s))",
                    transient=True,
                )
                cause = e
            else:
                try:
                    if response.status_code == 200:
                        try:
                            return parse_bundle(response.content)
                        except CmsProtocolError as e:
                            failure, cause = e, e
                    elif response.status_code in RETRYABLE_STATUSES:
                        failure = _status_error(response, attempt)
                        cause = failure
                        retry_after = retry_after_seconds(response)
                    else:
                        raise _status_error(response, attempt)
                finally:
                    release(response)
            delay = backoff_delay(attempt, settings.cms_retry_backoff_seconds)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
            if attempt == attempts or time.monotonic() + delay > deadline:
                raise failure from cause
            if retry_after is not None:
                pacer.pause(delay)  # a 429 slows the whole pull, not just this page
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class _PageShape(msgspec.Struct):
    """What a pull reads of a search page. Each entry stays raw JSON: msgspec checks its syntax
    and skips it at C speed, where parsing it into dicts would cost ten times the page in memory."""

    resourceType: object = None
    total: object = None
    link: object = None
    entry: list[msgspec.Raw] = []


class _EntryShape(msgspec.Struct):
    resource: msgspec.Raw = msgspec.Raw()


_PAGE_DECODER = msgspec.json.Decoder(_PageShape)
_ENTRY_DECODER = msgspec.json.Decoder(_EntryShape)


def parse_bundle(content: bytes) -> Page:
    """Reduce a search page to its entries' JSON bytes, exactly as CMS sent them.

    Anything unusual (malformed JSON, not a Bundle, an entry without a resource object) is left
    to the strict parser below, which says precisely what is wrong. The raw entries are parsed
    for the first time by the validation workers.
    """
    try:
        page = _PAGE_DECODER.decode(content)
        entries = [bytes(raw) for raw in page.entry]
        whole = page.resourceType == "Bundle" and all(
            bytes(_ENTRY_DECODER.decode(raw).resource)[:1] == b"{" for raw in entries
        )
    except (msgspec.DecodeError, msgspec.ValidationError):
        whole = False
    if not whole:
        return _parse_strictly(content)
    return Page(entries=entries, total=_count(page.total), next_url=next_link(page.link))


def _count(total: object) -> int | None:
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def next_link(links: object) -> str | None:
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _parse_strictly(content: bytes) -> Page:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as e:
        raise CmsProtocolError("Blue Button answered 200 with a body that is not JSON") from e
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        kind = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise CmsProtocolError(f"Blue Button answered 200 with {kind!s}, not a FHIR Bundle")
    entries = body.get("entry", [])
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("resource"), dict) for e in entries
    ):
        raise CmsProtocolError("Blue Button's Bundle has entries without a resource")
    return Page(
        entries=[orjson.dumps(entry) for entry in entries],
        total=_count(body.get("total")),
        next_url=next_link(body.get("link")),
    )


def _status_error(response: httpx.Response, attempt: int) -> CmsError:
    status = response.status_code
    detail = cms_detail(response)
    if status == 401:
        return CmsUnauthorizedError(
            "Blue Button refused the access token: it is expired or revoked, or the beneficiary's "
            "grant has ended. Refresh it (POST /bluebutton/refresh) or re-authorize "
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
        return rate_limited(
            f"Blue Button is rate-limiting this token ({attempt} attempt(s)); retry later",
            retry_after_seconds(response),
            detail,
        )
    if status == 400:
        return CmsBadRequestError("Blue Button rejected the search", upstream_status=status, detail=detail)
    return CmsUnavailableError(
        f"Blue Button failed with HTTP {status} ({attempt} attempt(s))",
        upstream_status=status,
        detail=detail,
        transient=status >= 500,
    )
