"""Pacing by CMS's `X-RateLimit-*` headers, shared by every pull of the process.

CMS throttles per access token over a sliding window and says so on every FHIR answer, both
versions (WS `apps/dot_ext/throttling.py`; bb2-api.md §4, bb2-v3.md §4): `X-RateLimit-Remaining` is
the requests left in the window counting this one, `X-RateLimit-Reset` the float seconds until the
oldest of them leaves it. When the remaining requests fall to the reserve (the requests one pull
may have in flight at once), every request of that token waits until the reset instead of
running into a 429: a one-shot pull and a sync run of the same grant share the budget, so the
`CmsClient` owns one `RateLimitPacer` for all of them. Tokens are kept as digests, and only while
they have a pause pending.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Mapping

from bluebutton.outbound.retry import Clock, Sleep

MAX_PAUSE = 60.0  # a Reset beyond this is not believed (a window of CMS's is seconds)


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number >= 0 else None


class RateLimitPacer:
    """Per-token pauses learnt from CMS's headers; `wait` before a request, `observe` its answer."""

    def __init__(
        self,
        reserve: int,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        max_tokens: int = 10_000,
    ) -> None:
        self._reserve = reserve
        self._sleep = sleep
        self._clock = clock
        self._max_tokens = max_tokens
        self._resume: dict[str, float] = {}

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def observe(self, token: str, headers: Mapping[str, str]) -> float:
        """Note an answer's headers; the pause they call for (0 when there is room)."""
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset = _number(headers.get("X-RateLimit-Reset"))
        if remaining is None or reset is None or remaining > self._reserve:
            return 0.0
        pause = min(reset, MAX_PAUSE)
        now = self._clock()
        if len(self._resume) >= self._max_tokens:  # drop pauses already over
            self._resume = {k: t for k, t in self._resume.items() if t > now}
        key = self._key(token)
        self._resume[key] = max(self._resume.get(key, 0.0), now + pause)
        return pause

    async def wait(self, token: str) -> float:
        """Wait while the token's window is spent; the seconds waited."""
        key = self._key(token)
        resume = self._resume.get(key)
        if resume is None:
            return 0.0
        delay = resume - self._clock()
        if delay <= 0:
            self._resume.pop(key, None)
            return 0.0
        await self._sleep(delay)
        return delay
