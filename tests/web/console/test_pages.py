"""The console's view helpers: whole days left, run totals, readable instants, the page headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bluebutton.web.console.pages import WARN_DAYS, days_left, in_progress, instant, totals
from bluebutton.web.pages import render

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ends", "days"),
    [
        pytest.param(NOW + timedelta(days=30, hours=1), 30, id="30-days"),
        pytest.param(NOW + timedelta(days=29, hours=23), 29, id="just-under-30"),
        pytest.param(NOW + timedelta(hours=1), 0, id="today"),
        pytest.param(NOW - timedelta(hours=1), -1, id="ended"),
    ],
)
def test_days_left(ends: datetime, days: int) -> None:
    assert days_left(ends.isoformat(), NOW) == days
    assert (days < WARN_DAYS) == (ends - NOW < timedelta(days=WARN_DAYS))


def test_no_end_date_means_no_count() -> None:
    assert days_left(None, NOW) is None and days_left("", NOW) is None


def test_totals_sum_over_resource_types() -> None:
    run = {
        "resources": {
            "ExplanationOfBenefit": {"fetched": 10, "new": 7, "invalid": 3},
            "Patient": {"fetched": 1, "new": 1},
        }
    }
    assert totals(run) == {"fetched": 11, "new": 8, "invalid": 3}
    assert totals(None) == {} and totals({"resources": None}) == {}


def test_in_progress() -> None:
    assert in_progress({"status": "queued"}, None)
    assert in_progress({"status": "succeeded"}, {"status": "running"})
    assert not in_progress({"status": "failed"}, None) and not in_progress()


def test_instants_are_shown_in_utc() -> None:
    assert instant("2026-12-03T08:30:05.5-05:00") == "2026-12-03 13:30:05 UTC"
    assert instant(None) == "—"


def test_template_values_are_escaped() -> None:
    page = render(
        "console/disconnect.html",
        home="/c",
        csrf="t",
        signed_in=True,
        refresh=False,
        grant={"id": "g", "patient": "<script>alert(1)</script>"},
    )
    html = bytes(page.body).decode()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
