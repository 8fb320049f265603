"""Outbound HTTP helpers: a read response is freed at once, without waiting for the collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest

from bluebutton.outbound import release

BODY = b"x" * 100_000


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counting frees objects meanwhile, as between rare collections."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _read_response() -> httpx.Response:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=BODY))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.post("https://upstream.test/", content=b"y" * 100_000)


@pytest.mark.usefixtures("no_collector")
async def test_httpx_keeps_a_read_response_alive() -> None:
    """Why `release` exists: the response and its stream refer to each other."""
    response = await _read_response()
    assert response.content == BODY
    alive = weakref.ref(response)
    del response
    assert alive() is not None


@pytest.mark.usefixtures("no_collector")
async def test_a_released_response_is_freed_with_its_bodies() -> None:
    response = await _read_response()
    assert response.content == BODY
    alive = weakref.ref(response)
    request = weakref.ref(response.request)
    release(response)
    del response
    assert alive() is None
    assert request() is None
