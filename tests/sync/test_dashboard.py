"""The Grafana dashboard (deploy/grafana/dashboards/bluebutton.json) against a real scrape of the
app with grant keeping on: every panel reads a series /metrics exposes, and every metric the app
exposes has a panel."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.running import open_client
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import Upstreams, sync_settings
from tests.test_monitoring import dashboard_metrics

# A series name -> the family type it belongs to, by the suffix the exposition format adds.
SUFFIXES = (
    ("_total", {"counter"}),
    ("_bucket", {"histogram"}),
    ("_count", {"histogram", "summary"}),
    ("_sum", {"histogram", "summary"}),
)


def family_of(series: str, families: dict[str, str]) -> str | None:
    """The family a series name is a sample of in the scrape, if any."""
    if families.get(series) in ("gauge", "unknown"):
        return series
    for suffix, kinds in SUFFIXES:
        if series.endswith(suffix) and families.get(series.removesuffix(suffix)) in kinds:
            return series.removesuffix(suffix)
    return None


@pytest.fixture
async def families(database_url: str, token_keys: str) -> dict[str, str]:
    """Family name -> type, from the app's /metrics with a database (no grant needed: the
    database families are shown at zero, the labelled counters are declared)."""
    with Upstreams().router():
        async with open_client(sync_settings(database_url, token_keys)) as client:
            assert (await client.get("/health")).status_code == 200
            response = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 200, response.text
    return {f.name: f.type for f in text_string_to_metric_families(response.text)}


async def test_every_panel_reads_a_series_the_app_exposes(families: dict[str, str]) -> None:
    # The reading holds: a counter's family name or Prometheus's own `up` are no series here.
    assert family_of("bluebutton_http_requests_total", families) == "bluebutton_http_requests"
    assert family_of("bluebutton_http_requests", families) is None
    assert family_of("up", families) is None
    for title, names in dashboard_metrics().items():
        missing = sorted(name for name in names if family_of(name, families) is None)
        assert not missing, f"panel {title!r} reads {missing}, not in /metrics"


async def test_every_metric_of_the_app_has_a_panel(families: dict[str, str]) -> None:
    shown = {family_of(name, families) for names in dashboard_metrics().values() for name in names}
    # prometheus-client's `<counter>_created` timestamps are not metrics of their own.
    exposed = {name for name in families if not name.endswith("_created")}
    assert {"bluebutton_grants", "bluebutton_http_requests"} <= exposed
    assert sorted(exposed - shown) == [], "add a panel to deploy/grafana/dashboards/bluebutton.json"
