"""Outbound HTTP helpers: a read response is freed at once; one reader of upstream error bodies;
`Retry-After` in both its forms."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bluebutton.outbound import read_error_body, release, retry_after_seconds

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


# ------------------------------------------------------------------------------------ Retry-After

NOW = 1_780_000_000.0  # Thu, 28 May 2026 20:26:40 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("7", 7.0, id="delay-seconds"),
        pytest.param(" 120 ", 120.0, id="delay-seconds-spaces"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("Thu, 28 May 2026 20:27:10 GMT", 30.0, id="http-date"),
        pytest.param("Thursday, 28-May-26 20:27:10 GMT", 30.0, id="http-date-rfc850"),
        pytest.param("Thu May 28 20:27:10 2026", 30.0, id="http-date-asctime"),
        pytest.param("Thu, 28 May 2026 20:26:40 GMT", 0.0, id="http-date-now"),
        pytest.param("Thu, 28 May 2026 20:00:00 GMT", 0.0, id="http-date-past"),
        pytest.param("Fri, 29 May 2026 20:26:40 GMT", 86_400.0, id="http-date-tomorrow"),
        pytest.param("-5", None, id="negative"),
        pytest.param("inf", None, id="inf"),
        pytest.param("9" * 400, None, id="digits-past-float"),
        pytest.param("nan", None, id="nan"),
        pytest.param("soon", None, id="words"),
        pytest.param("Thu, 32 May 2026 20:27:10 GMT", None, id="impossible-date"),
        pytest.param("", None, id="empty"),
    ],
)
def test_retry_after_seconds(value: str, seconds: float | None) -> None:
    response = httpx.Response(429, headers={"Retry-After": value})
    assert retry_after_seconds(response, NOW) == seconds


def test_no_retry_after() -> None:
    assert retry_after_seconds(httpx.Response(429), NOW) is None
