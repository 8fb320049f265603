"""Finished upstream responses: a read response is freed at once; one reader of upstream error
bodies."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bluebutton.outbound.responses import read_error_body, release

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


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"detail": "Not found."}, "Not found.", id="drf-detail"),
        pytest.param(
            {"error": "invalid_grant", "error_description": "expired"}, "invalid_grant: expired", id="oauth"
        ),
        pytest.param({"status_code": 400, "message": "Bad"}, "Bad", id="message"),
        pytest.param(
            {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "a"}, {"diagnostics": "b"}]},
            "a; b",
            id="OperationOutcome",
        ),
        pytest.param(
            {"detail": [{"loc": ["body"], "msg": "field required"}, {"msg": "bad"}]},
            "field required; bad",
            id="fastapi-422",
        ),
        pytest.param({"something": "else"}, None, id="unknown-shape"),
        pytest.param(["detail"], None, id="array"),
    ],
)
def test_error_body_detail(body: Any, expected: str | None) -> None:
    assert read_error_body(httpx.Response(400, json=body)).detail == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param({"error": "invalid_grant", "error_description": "x"}, "invalid_grant", id="oauth"),
        pytest.param({"error": ""}, None, id="empty"),
        pytest.param({"error": 3}, None, id="not-a-string"),
        pytest.param({"detail": "Not found."}, None, id="drf"),
    ],
)
def test_error_body_oauth_error(body: Any, error: str | None) -> None:
    assert read_error_body(httpx.Response(400, json=body)).error == error


def test_error_body_of_non_json_and_long_bodies() -> None:
    assert read_error_body(httpx.Response(502, text="<html>Bad Gateway</html>")).detail is None
    detail = read_error_body(httpx.Response(500, json={"detail": "x" * 5000})).detail
    assert detail is not None
    assert len(detail) <= 500
