"""The console's view helpers: whole days left, run totals, readable instants, the page headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bluebutton.web.console.pages import WARN_DAYS, days_left, in_progress, instant, run_chart, totals
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


def test_the_run_chart_scales_bars_and_marks_failures() -> None:
    history = [
        {"id": 1, "status": "succeeded", "finished_at": NOW, "new_claims": 74},
        {"id": 2, "status": "failed", "finished_at": NOW + timedelta(days=1), "new_claims": 0},
        {"id": 3, "status": "succeeded", "finished_at": NOW + timedelta(days=2), "new_claims": 0},
        {"id": 4, "status": "partial", "finished_at": NOW + timedelta(days=3), "new_claims": 3},
    ]
    chart = run_chart(history)
    assert chart is not None and run_chart([]) is None
    assert chart.scale_max == 100 and (chart.first, chart.last) == ("2026-12-02", "2026-12-05")
    full = chart.bottom - chart.top
    heights = [bar.height for bar in chart.bars]
    assert heights == [round(full * 0.74, 1), 3.0, 0.0, round(full * 0.03, 1)]
    assert [bar.failed for bar in chart.bars] == [False, True, False, False]
    assert chart.bars[0].title == "Run 1, 2026-12-02 12:00 UTC: 74 new claims"
    assert chart.bars[1].title.endswith(": failed") and chart.bars[3].title.endswith(": 3 new claims")
    assert all(bar.y + bar.height == chart.bottom for bar in chart.bars)
    xs = [bar.x for bar in chart.bars]
    assert xs == sorted(xs) and chart.last_x == chart.bars[-1].x + chart.bars[-1].width
    many = run_chart([{**history[0], "id": n, "new_claims": n} for n in range(1, 61)])
    assert many is not None and many.scale_max == 100 and many.bars[-1].x + many.bars[-1].width <= many.width
