"""The console's view helpers: days left, run totals, whether a page shows work in progress.

Pages are rendered by `bluebutton.web.pages.render`, like every page of the service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bluebutton.web.pages import instant

__all__ = ["WARN_DAYS", "days_left", "in_progress", "instant", "totals"]

WARN_DAYS = 30  # CMS's data-access grant lasts 13 months; warn a month before it lapses


def days_left(expiration: str | None, now: datetime) -> int | None:
    """Whole days until the data-access grant ends (negative once past); None without an end."""
    if not expiration:
        return None
    return (datetime.fromisoformat(expiration) - now).days


def totals(run: dict[str, Any] | None) -> dict[str, int]:
    """A run's counts summed over resource types (fetched, new, changed, unchanged, invalid)."""
    summed: dict[str, int] = {}
    for counts in ((run or {}).get("resources") or {}).values():
        for name, value in counts.items():
            summed[name] = summed.get(name, 0) + int(value)
    return summed


def in_progress(*runs: dict[str, Any] | None) -> bool:
    """Whether a page shows a run that has not ended (it then reloads itself every few seconds)."""
    return any(run is not None and run["status"] in ("queued", "running") for run in runs)
