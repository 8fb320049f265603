"""A round of 50 grants through real processes (the emulated CMS and connect, the connector with
its embedded worker, two standalone workers) on a PostgreSQL of the test's own, which is stopped
for 30 s and later killed with -9 mid-round. Afterwards, with no call from anyone: every grant is
complete in connect, no entry is stored twice, no run is open without a live job, the workers are
the same processes, and the embedded worker runs again. During the outage the operator API answers
503 with Retry-After, `/health` 200 and `/health/grant-keeping` 503."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from bluebutton.sandbox.tools.bench.enrol import enrol_all
from bluebutton.sandbox.tools.bench.sync import bench_settings, open_bench_service
from bluebutton.sandbox.tools.stack import Stack, StackConfig, ca_context, start_stack
from tests.e2e.harness import Harness
from tests.processes import until
from tests.sync.conftest import ADMIN_KEY
from tests.sync.own_postgres import OwnPostgres, available

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(available() is not None, reason=str(available()))]

USERS = range(100, 150)  # 50 grants
WORKERS = ("worker-1", "worker-2")
KEY = {"X-API-Key": ADMIN_KEY}
OUTAGE_SECONDS = 30.0  # the fault's length, as the issue measured it


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stack(own_postgres: OwnPostgres, token_keys: str, tmp_path: Path) -> Iterator[Stack]:
    sync_env = {
        "BLUEBUTTON_DATABASE_URL": own_postgres.url,
        "BLUEBUTTON_TOKEN_KEYS": token_keys,
        "BLUEBUTTON_ADMIN_API_KEY": ADMIN_KEY,
        "BLUEBUTTON_SYNC_WORKER": "embedded",
        "BLUEBUTTON_SYNC_CONCURRENCY": "4",
        "BLUEBUTTON_SYNC_HEARTBEAT_SECONDS": "1",
        "BLUEBUTTON_SYNC_STALLED_SECONDS": "5",
        "BLUEBUTTON_SYNC_SWEEP_CRON": "* * * * * */2",
        "BLUEBUTTON_VALIDATION_WORKERS": "1",
        "BLUEBUTTON_CMS_RETRY_BACKOFF_SECONDS": "0.05",
        "BLUEBUTTON_DATABASE_POOL_SIZE": "8",
    }
    config = StackConfig(
        connect_db=tmp_path / "connect.sqlite3",
        connect_args=["--rate-limit", "0"],
        connector_env=sync_env,
        log_dir=tmp_path,
    )
    running = start_stack(config)
    try:
        yield running
    finally:
        running.stop()


def _scalar(url: str, sql: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=3) as connection:
            row = connection.execute(sql.encode()).fetchone()
    except psycopg.OperationalError:
        return -1
    assert row is not None
    return int(row[0])


async def _enrol_and_queue(stack: Stack) -> None:
    settings = bench_settings(dict(stack.commands["connector"][1]))
    async with open_bench_service(settings) as (service, _cms):
        enrolled = await enrol_all(service, stack.cms_url, USERS)
        for grant in enrolled:
            await service.jobs.request_run(grant.grant_id)


SUCCEEDED = "SELECT count(*) FROM bluebutton_runs WHERE status = 'succeeded'"
DONE = (
    "SELECT count(*) FROM bluebutton_grants g WHERE NOT EXISTS (SELECT 1 FROM bluebutton_runs r "
    "WHERE r.grant_id = g.id AND r.status IN ('queued', 'running')) AND (SELECT r.status FROM "
    "bluebutton_runs r WHERE r.grant_id = g.id ORDER BY r.id DESC LIMIT 1) IN ('succeeded', 'partial')"
)
OPEN_WITHOUT_JOB = (
    "SELECT count(*) FROM bluebutton_runs r LEFT JOIN procrastinate_jobs j ON j.id = r.job_id "
    "WHERE r.status IN ('queued', 'running') AND (j.id IS NULL OR j.status NOT IN ('todo', 'doing'))"
)


def test_a_round_survives_the_database_stopped_30s_and_killed(
    stack: Stack, own_postgres: OwnPostgres
) -> None:
    e2e = Harness(stack)
    url = own_postgres.url
    try:
        for name in WORKERS:
            stack.start_worker(name)
        pids = {name: stack.processes[name].pid for name in ("connector", *WORKERS)}
        e2e.cms_faults(latency_ms=300)  # a round long enough to be hit mid-way
        asyncio.run(_enrol_and_queue(stack))

        until(lambda: _scalar(url, SUCCEEDED) >= 5, "the round to be under way")
        own_postgres.stop()
        stopped = time.monotonic()
        with httpx.Client(verify=ca_context(), timeout=60.0) as client:
            base = stack.connector_url
            grants = client.get(f"{base}/bluebutton/grants", headers=KEY)
            assert grants.status_code == 503, grants.text
            assert grants.headers["retry-after"]
            assert "database" in grants.json()["issue"][0]["diagnostics"]
            health = client.get(f"{base}/health")
            assert health.status_code == 200
            assert health.json()["grant_keeping"]["database"] == "unreachable"
            assert client.get(f"{base}/health/grant-keeping").status_code == 503
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))  # the fault lasts 30 s
        own_postgres.start()

        before_kill = until(lambda: (n := _scalar(url, SUCCEEDED)) >= 15 and n, "the round to go on")
        assert before_kill < 50 + 10, "the round ended before the kill: raise the CMS latency"
        own_postgres.kill()
        own_postgres.start()
        e2e.cms_faults()

        # nobody calls anything from here: the workers finish the round by themselves
        until(lambda: _scalar(url, DONE) == len(USERS), "every grant's round to finish")
        assert _scalar(url, OPEN_WITHOUT_JOB) == 0
        assert {name: stack.processes[name].pid for name in pids} == pids
        assert all(stack.processes[name].poll() is None for name in pids)

        with httpx.Client(verify=ca_context(), timeout=30.0) as client:
            state = client.get(f"{stack.connector_url}/health").json()["grant_keeping"]
            assert state["database"] == "reachable" and state["embedded_worker"] == "running", state
            assert client.get(f"{stack.connector_url}/health/grant-keeping").status_code == 200

        stored: Counter[tuple[str, str]] = Counter()
        by_patient: Counter[str] = Counter()
        for record in e2e.records():
            bundle = e2e.read_back(f"FHIR-R4:0:{record['offset']}").bundle
            for entry in bundle.get("entry", []):
                resource = entry["resource"]
                stored[(resource["resourceType"], resource["id"])] += 1
                if resource["resourceType"] == "ExplanationOfBenefit":
                    by_patient[resource["patient"]["reference"].rsplit("/", 1)[-1]] += 1
        figures = {
            "runs": _scalar(url, "SELECT count(*) FROM bluebutton_runs"),
            "ended by the outage": _scalar(
                url,
                "SELECT count(*) FROM bluebutton_runs WHERE issues::text LIKE '%database was unreachable%'",
            ),
            "ended as stopped": _scalar(
                url,
                "SELECT count(*) FROM bluebutton_runs WHERE issues::text LIKE '%worker running this run%'",
            ),
            "records in connect": len(e2e.records()),
            "entries in connect": sum(stored.values()),
        }
        print(f"outage round: {figures}")
        twice = [key for key, n in stored.items() if n > 1]
        assert twice == [], f"{len(twice)} entries stored twice"
        for user in USERS:
            profile = e2e.cms_user(user)
            expected = profile["claims"] - len(profile["invalid_claims"])
            assert by_patient[profile["patient"]] == expected, (
                user,
                by_patient[profile["patient"]],
                expected,
            )
    finally:
        e2e.close()
