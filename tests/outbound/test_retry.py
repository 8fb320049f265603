"""`Retry-After` in both forms of RFC 9110 §10.2.3, and what is no advice."""

from __future__ import annotations

import httpx
import pytest

from bluebutton.outbound.retry import retry_after_seconds

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
