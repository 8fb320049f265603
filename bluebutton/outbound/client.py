"""The shared httpx client every upstream client starts from, and the base class that owns it."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Self

import httpx

from bluebutton import __version__

USER_AGENT = f"bluebutton/{__version__} (+https://github.com/bluebutton-connector)"

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
