"""The emulator's clock: real (or injected) time plus an offset an admin call moves forward.

Tokens, grants, the claims schedule and every Bundle's `meta.lastUpdated` read this one clock, so
moving it a week on (`POST /_sandbox/clock`) ages tokens, ends grants and brings that week's new
claims at once, with nobody sleeping.
"""

from __future__ import annotations

from collections.abc import Callable


class EmulatedClock:
    """Seconds since the epoch, `advance`d by admin calls; never goes backwards."""

    def __init__(self, base: Callable[[], float]) -> None:
        self._base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self._base() + self.offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the emulated clock only moves forward")
        self.offset += seconds
        return self()
