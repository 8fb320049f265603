"""The console's view helpers: filters and links, days left, run totals, work in progress, the
run-history chart.

Pages are rendered by `bluebutton.web.pages.render`, like every page of the service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from bluebutton.errors import InvalidQueryError
from bluebutton.sync.grants import STATES, GrantState
from bluebutton.sync.listing import PATIENT_SEARCH
from bluebutton.web.pages import instant

__all__ = [
    "WARN_DAYS",
    "Chart",
    "days_left",
    "in_progress",
    "instant",
    "link",
    "patient_search",
    "run_chart",
    "state_filter",
    "totals",
]

WARN_DAYS = 30  # CMS's data-access grant lasts 13 months; warn a month before it lapses


def state_filter(state: str) -> GrantState | None:
    """The grant list's state filter ("" from the form: every state), or a 422 naming it."""
    if not state:
        return None
    if state not in STATES:
        raise InvalidQueryError(f"state: {state!r} is not a grant state; use one of {', '.join(STATES)}")
    return state


def patient_search(patient: str) -> str | None:
    """The grant list's patient-id prefix ("" from the form: none), or a 422 naming it."""
    search = patient.strip() or None
    if search is not None and not re.fullmatch(PATIENT_SEARCH, search):
        raise InvalidQueryError("patient: a patient id has no control characters")
    return search


def link(path: str, **query: str | None) -> str:
    """`path` with the query parameters that have a value (the pager's and the filters' links)."""
    kept = {name: value for name, value in query.items() if value}
    return f"{path}?{urlencode(kept)}" if kept else path


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


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    failed: bool
    title: str


@dataclass(frozen=True)
class Chart:
    """A bar per ended run (claims stored new), oldest on the left, drawn as inline SVG."""

    width: int
    height: int
    top: int
    left: int
    bottom: int
    scale_max: int
    bars: list[Bar]
    first: str
    last: str
    last_x: float  # where the last bar ends: the last date is written under it


CHART_WIDTH, CHART_HEIGHT = 640, 170
_TOP, _LEFT, _BOTTOM, _RIGHT = 12, 40, 24, 8


def _nice_ceiling(value: int) -> int:
    """The axis top: 1, 2, 5, 10, 20, 50 ... at least `value`."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def run_chart(history: list[dict[str, Any]]) -> Chart | None:
    """The chart of `runs.history` (None without an ended run): bar heights are claims new; a failed
    run is a short red mark on the baseline, so a gap in the data shows as such."""
    if not history:
        return None
    plot_w = CHART_WIDTH - _LEFT - _RIGHT
    plot_h = CHART_HEIGHT - _TOP - _BOTTOM
    scale_max = _nice_ceiling(max(max(int(r["new_claims"]) for r in history), 1))
    slot = min(plot_w / len(history), 36.0)  # few runs: bars of a fixed width from the left
    width = max(slot * 0.7, 1.0)
    bars = []
    for index, run in enumerate(history):
        new = int(run["new_claims"])
        failed = run["status"] == "failed"
        height = 3.0 if failed else max(plot_h * new / scale_max, 1.0 if new else 0.0)
        when = run["finished_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        what = "failed" if failed else f"{new:,} new claim{'s' if new != 1 else ''}"
        bars.append(
            Bar(
                x=round(_LEFT + index * slot + (slot - width) / 2, 1),
                y=round(_TOP + plot_h - height, 1),
                width=round(width, 1),
                height=round(height, 1),
                failed=failed,
                title=f"Run {run['id']}, {when}: {what}",
            )
        )
    first, last = (r["finished_at"].astimezone(UTC).strftime("%Y-%m-%d") for r in (history[0], history[-1]))
    last_x = round(bars[-1].x + bars[-1].width, 1)
    return Chart(
        CHART_WIDTH, CHART_HEIGHT, _TOP, _LEFT, CHART_HEIGHT - _BOTTOM, scale_max, bars, first, last, last_x
    )
