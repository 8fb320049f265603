"""Waiting between attempts: the clocks a client waits by, `Retry-After`, backoff with jitter."""

from __future__ import annotations

import email.utils
import math
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC

import httpx

# What an upstream client waits with and measures time by (tests pass a virtual clock); the wall
# clock (Unix time) is what an HTTP date is read against.
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# RFC 9110 §10.2.3: `delay-seconds = 1*DIGIT` (a fraction is tolerated; a sign, `inf`, `nan` are not).
_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


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
