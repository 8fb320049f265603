"""New claims over emulated time: CMS loads new synthetic claims for BBUser00000-09999 every week
(grant-keeping.md), so the emulator does too, from its own start.

Week k's batch (k >= 1) arrives at `epoch + k weeks` with that moment as `meta.lastUpdated`: 1 to
`per_week` claims per user, drawn from (user, k), so every process agrees and nothing arrives
before one emulated week has passed (real time never reaches it in a test; `POST /_sandbox/clock`
does). Claims added through the admin API come on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from bluebutton.sandbox.cms.data import Claim, new_claim, seeded

WEEK_SECONDS: Final = 7 * 86_400
SCHEDULED_USERS: Final = range(0, 10_000)
_SERIAL_BASE: Final = 1_000_000  # apart from the serials of admin-added claims


@dataclass(frozen=True)
class ClaimSchedule:
    epoch: float  # the emulator's start, on its own clock
    per_week: int  # most new claims a user gets per week; 0 turns the schedule off

    def weeks(self, now: float) -> int:
        """Whole emulated weeks since the start: how many batches have arrived."""
        if self.per_week <= 0:
            return 0
        return max(0, int((now - self.epoch) // WEEK_SECONDS))

    def count(self, user: int, week: int) -> int:
        """How many claims week `week`'s batch brings the user."""
        if self.per_week <= 0 or week < 1 or user not in SCHEDULED_USERS:
            return 0
        return seeded(user * 7_919 + week * 104_729 + 17).randint(1, self.per_week)

    def arrival(self, week: int) -> datetime:
        return datetime.fromtimestamp(self.epoch + week * WEEK_SECONDS, UTC)

    def total(self, user: int, weeks: int) -> int:
        return sum(self.count(user, week) for week in range(1, weeks + 1))

    def claims(self, user: int, weeks: int, taken: set[str]) -> list[Claim]:
        """Every scheduled claim of the user in the first `weeks` weeks (ids not in `taken`)."""
        found = []
        for week in range(1, weeks + 1):
            for index in range(self.count(user, week)):
                moment = self.arrival(week) + timedelta(milliseconds=index)
                claim = new_claim(user, _SERIAL_BASE + week * 100 + index, moment, taken)
                taken.add(claim.id)
                found.append(claim)
        return found
