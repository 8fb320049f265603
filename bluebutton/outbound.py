"""Outbound HTTP: TLS trust built once, and the httpx client every upstream client starts from.

Verification is always on; `BLUEBUTTON_CA_FILE` can only add trust (e.g. connect's mkcert root or
the sandbox CA), never remove it.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Self

import certifi
import httpx
import orjson

from bluebutton import __version__
from bluebutton.settings import Settings

USER_AGENT = f"bluebutton/{__version__} (+https://github.com/bluebutton-connector)"

# What an upstream client waits with and measures time by (tests pass a virtual clock); the wall
# clock (Unix time) is what an HTTP date is read against.
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# RFC 9110 §10.2.3: `delay-seconds = 1*DIGIT` (a fraction is tolerated; a sign, `inf`, `nan` are not).
_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


class _WithoutQuery(logging.Filter):
    """Drops the query string from URLs in httpx's log records: they carry patient ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.copy_with(query=None) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


def redact_http_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _WithoutQuery) for f in logger.filters):
        logger.addFilter(_WithoutQuery())


def build_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The system trust store plus certifi's bundle plus `BLUEBUTTON_CA_FILE`, if set."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if settings.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.ca_file))
    return context


Wrap = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]
"""What a client's transport is wrapped in at construction (the metrics' counting transport)."""


def build_client(
    *,
    base_url: str,
    context: ssl.SSLContext,
    timeout: float,
    max_connections: int = 20,
    wrap: Wrap | None = None,
) -> httpx.AsyncClient:
    """A shared client for one upstream: explicit timeouts, no redirects (a token never follows).

    The transport is built here, TLS and pool limits with it, so that `wrap` (metrics) sees every
    call without anyone touching the client's private attributes later."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(verify=context, limits=limits)
    if wrap is not None:
        transport = wrap(transport)
    return httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


class UpstreamClient:
    """An upstream's client owns its shared httpx client: `async with` it, and leaving closes it."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._client = http

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def release(response: httpx.Response) -> None:
    """Let a finished response be freed at once, with its body and its request's body.

    httpx binds a response and its stream to each other. Such a cycle outlives its last use until
    the cyclic collector runs, which in a service that allocates few objects can be many pulls
    later: megabytes of pages and Bundles held for nothing, and a higher peak for the next pull.
    """
    response.stream = httpx.ByteStream(b"")


def retry_after_seconds(response: httpx.Response, now: float) -> float | None:
    """`Retry-After` as seconds from `now` (Unix time), in either form of RFC 9110 §10.2.3:
    delay-seconds, or an HTTP-date (a date already past is 0). Anything else is no advice."""
    value = response.headers.get("Retry-After", "").strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None  # 400 digits are `inf`
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 5322's "-0000": UTC, origin unknown
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, base: float, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter (attempt 1 → up to `base`, doubling, capped)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto


@dataclass(frozen=True)
class ErrorBody:
    """What an upstream said in an error body: the OAuth `error` code, and a short explanation."""

    error: str | None
    detail: str | None


def read_error_body(response: httpx.Response) -> ErrorBody:
    """Read an error body from CMS (DRF `detail`, OAuth `error`/`error_description`, FHIR
    OperationOutcome) or connect (FastAPI's `detail`, a string or a list of errors), or a short
    plain-text one (a proxy's); an HTML error page says nothing worth passing on."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text.strip()
        return ErrorBody(None, text[:300] if text and not text.startswith("<") else None)
    if not isinstance(body, dict):
        return ErrorBody(None, None)
    error = body.get("error")
    error = error if isinstance(error, str) and error else None
    if body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics", "")) for i in body.get("issue", []) if isinstance(i, dict)]
        text = "; ".join(t for t in texts if t)
    else:
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI's 422 shape
            detail = "; ".join(str(item.get("msg", item)) for item in detail if isinstance(item, dict))
        parts = [error, body.get("error_description"), detail, body.get("message")]
        text = ": ".join(p for p in parts if isinstance(p, str) and p)
    return ErrorBody(error, text[:500] or None)
