"""`/metrics` of grant keeping, read from PostgreSQL at scrape: grants by state, runs by status
and duration, entries, the job queue; a standalone worker's runs count too."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.running import open_client
from tests.scrape import Samples, samples, value
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import Upstreams, drain, open_service, sync_settings

USER = 2  # BBUser00002: 7 claims, 4 coverages, 1 patient


async def _scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 200, response.text
    return samples(response.text)


async def test_grant_keeping_metrics_follow_the_database(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    settings = sync_settings(database_url, token_keys)  # no embedded worker: jobs wait
    with upstreams.router():
        async with open_client(settings) as client:
            start = await client.get("/bluebutton/authorize", params={"sync": "true"})
            state = parse_qs(urlsplit(start.json()["authorize_url"]).query)["state"][0]
            upstreams.code_answer = upstreams.authorize(USER)
            answer = await client.get(
                "/bluebutton/authorize_callback",
                params={"code": "the-code", "state": state},
                headers={"Accept": "application/json"},
            )
            assert answer.status_code == 200, answer.text

            found = await _scrape(client)
            assert value(found, "bluebutton_grants", state="active") == 1
            assert value(found, "bluebutton_grants", state="revoked") == 0
            assert value(found, "bluebutton_runs", status="queued") == 1
            assert value(found, "bluebutton_jobs_waiting", queue="bluebutton-sync") == 2  # the run, an event
            assert value(found, "bluebutton_jobs_oldest_waiting_seconds", queue="bluebutton-sync") >= 0
            assert value(found, "bluebutton_sync_entries_total", stage="fetched") == 0

            async with open_service(settings) as worker:  # a standalone worker process's service
                await drain(worker)

            found = await _scrape(client)
            assert value(found, "bluebutton_runs", status="succeeded") == 1
            assert value(found, "bluebutton_runs", status="queued") == 0
            assert value(found, "bluebutton_run_duration_seconds_count", status="succeeded") == 1
            assert value(found, "bluebutton_run_duration_seconds_bucket", status="succeeded", le="+Inf") == 1
            for stage, count in (("fetched", 12), ("validated", 12), ("invalid", 0), ("forwarded", 12)):
                assert value(found, "bluebutton_sync_entries_total", stage=stage) == count, stage
            assert value(found, "bluebutton_jobs_waiting", queue="bluebutton-sync") == 0
            assert value(found, "bluebutton_jobs_running", queue="bluebutton-sync") == 0


async def test_the_docs_list_every_metric(database_url: str, token_keys: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.factories import ROOT

    page = (ROOT / "docs" / "events-and-metrics.md").read_text()
    documented = page.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    with Upstreams().router():
        async with open_client(sync_settings(database_url, token_keys)) as client:
            response = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})
    # prometheus-client's `<counter>_created` timestamps are not metrics of their own
    names = {f.name for f in text_string_to_metric_families(response.text) if not f.name.endswith("_created")}
    assert "bluebutton_grants" in names and "bluebutton_http_requests" in names
    missing = {n for n in names if f"`{n}`" not in documented and f"`{n}_total`" not in documented}
    assert not missing
