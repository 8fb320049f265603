"""Runtime knobs of the connect emulator: the fault switches and connect's rate limiter.

`Faults` is the document behind `GET`/`PUT /_sandbox/faults` (see `bluebutton.sandbox.connect`).
`FixedWindowLimiter` reproduces connect's slowapi 0.1.5 default limit: `limits`' fixed window with
in-memory storage, keyed by client IP and scoped to the request path (slowapi scopes default limits
by `request["path"]`), so `/fhir/Bundle`, `/data` and `/status` each get their own budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

KAFKA_FAILURE_DETAIL = "Object of type Bundle is not JSON serializable"
"""connect's 500 detail when the Kafka write fails (lfh-connect.md §6): its error path cannot
serialise the fhir.resources model, so the real cause never reaches the client."""


class Faults(BaseModel):
    """Fault switches; a `PUT` replaces them all, so `PUT {}` resets to the start-up values."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    latency_ms: int = Field(default=0, ge=0, le=600_000)
    fail_next: int = Field(default=0, ge=0)
    fail_after: int | None = Field(default=None, ge=0)
    down: bool = False
    # `validate` would shadow a BaseModel method, hence the alias.
    fhir_validation: bool = Field(default=True, alias="validate")
    rate_limit: int = Field(default=10, ge=0)
    # The next N `POST /fhir` answers are the rate limiter's 429 whatever the clock says, so a test
    # can meet connect's 429 without racing its one-second window.
    throttle_next: int = Field(default=0, ge=0)
    # connect's Kafka callback race (lfh-connect.md §7): this share of stored POSTs, and the next
    # `null_location_next` whatever the share, are answered 200 with `status` and
    # `data_record_location` null although the record is stored (its `uuid` is in the answer).
    null_location_share: float = Field(default=0.0, ge=0.0, le=1.0)
    null_location_next: int = Field(default=0, ge=0)

    def loses_location(self, draw: random.Random) -> bool:
        """Decide whether this stored POST is answered without its location."""
        if self.null_location_next > 0:
            self.null_location_next -= 1
            return True
        return self.null_location_share > 0 and draw.random() < self.null_location_share

    def throttles(self) -> bool:
        """Decide whether this POST is refused with 429, consuming one `throttle_next` unit."""
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return True
        return False

    def storage_fails(self) -> bool:
        """Decide whether this Kafka write fails, consuming one `fail_next` or `fail_after` unit."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        if self.fail_after is not None:
            if self.fail_after == 0:
                return True
            self.fail_after -= 1
        return False


class FixedWindowLimiter:
    """`per_second` requests per (client, path) in a one-second window opened by the first hit.

    Used from the event loop only, so it needs no lock. `per_second` may change at runtime; 0 turns
    the limiter off.
    """

    _PRUNE_ABOVE = 10_000  # keys; unknown paths would otherwise grow the table forever

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    def hit(self, client: str, path: str) -> bool:
        """Count one request; False when it is over the limit."""
        if self.per_second <= 0:
            return True
        now = self._clock()
        key = (client, path)
        start, count = self._windows.get(key, (now, 0))
        if now - start >= 1.0:
            start, count = now, 0
        self._windows[key] = (start, count + 1)
        if len(self._windows) > self._PRUNE_ABOVE:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < 1.0}
        return count + 1 <= self.per_second

    @property
    def message(self) -> str:
        # slowapi renders the `limits` item as "<n> per 1 second"; with the limiter off (a forced
        # 429 from `throttle_next`), connect's default limit of 10.
        return f"Rate limit exceeded: {self.per_second or 10} per 1 second"
