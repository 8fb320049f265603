"""Grant keeping over real processes: the emulated CMS and connect, the connector, standalone
workers (`python -m bluebutton worker`), one PostgreSQL. Enrol with sync=true through CMS's login
and consent pages, then watch runs; kill a worker mid-run and let another recover its job; two
workers racing for one grant refresh its single-use token exactly once."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from bluebutton.sandbox.tools.login import authorize
from bluebutton.sandbox.tools.stack import Stack, StackConfig, start_stack
from bluebutton.sync.runs import SYNC_TASK
from tests.e2e.harness import Harness
from tests.sync.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e

KEY = {"X-API-Key": ADMIN_KEY}
USER = 3  # BBUser00003: 52 claims (two pages of 50)
WAIT = 300.0  # generous: a loaded two-core machine


@pytest.fixture
def stack(database_url: str, token_keys: str, tmp_path) -> Iterator[Stack]:
    sync_env = {
        "BLUEBUTTON_DATABASE_URL": database_url,
        "BLUEBUTTON_TOKEN_KEYS": token_keys,
        "BLUEBUTTON_ADMIN_API_KEY": ADMIN_KEY,
        "BLUEBUTTON_SYNC_WORKER": "off",
        "BLUEBUTTON_SYNC_HEARTBEAT_SECONDS": "1",
        "BLUEBUTTON_SYNC_STALLED_SECONDS": "4",
        "BLUEBUTTON_SYNC_SWEEP_CRON": "* * * * * */2",
        "BLUEBUTTON_VALIDATION_WORKERS": "1",
        "BLUEBUTTON_CMS_RETRY_BACKOFF_SECONDS": "0.05",
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


def _start_worker(stack: Stack, name: str) -> None:
    stack.start_worker(name)


def _until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def _run(e2e: Harness, run_id: int) -> dict[str, Any]:
    answer = e2e.client.get(f"{e2e.stack.connector_url}/bluebutton/runs/{run_id}", headers=KEY)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _finished(e2e: Harness, run_id: int) -> dict[str, Any]:
    found: dict[str, Any] = _until(
        lambda: (r := _run(e2e, run_id))["status"] not in ("queued", "running") and r, f"run {run_id}"
    )
    return found


def _stored_claims(e2e: Harness) -> Counter[str]:
    """Every EOB id in every Bundle connect holds, read back from connect itself."""
    ids: Counter[str] = Counter()
    for record in e2e.records():
        location = f"FHIR-R4:0:{record['offset']}"
        bundle = e2e.read_back(location).bundle
        ids.update(
            e["resource"]["id"]
            for e in bundle.get("entry", [])
            if e["resource"]["resourceType"] == "ExplanationOfBenefit"
        )
    return ids


def _sync_now(e2e: Harness, grant_id: str) -> int:
    answer = e2e.client.post(f"{e2e.stack.connector_url}/bluebutton/grants/{grant_id}/sync", headers=KEY)
    assert answer.status_code == 202, answer.text
    return int(answer.json()["run_id"])


def test_enrol_first_run_incremental_runs_and_a_killed_worker(stack: Stack) -> None:
    e2e = Harness(stack)
    try:
        _start_worker(stack, "worker-1")
        answer = authorize(stack.connector_url, USER, sync=True)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "refresh_token" not in body
        grant_id = body["grant_id"]

        first = _finished(e2e, body["run_id"])
        assert first["status"] == "succeeded", first
        assert first["resources"]["ExplanationOfBenefit"]["new"] == 52
        stored = _stored_claims(e2e)
        assert len(stored) == 52 and set(stored.values()) == {1}

        records = len(e2e.records())
        second = _finished(e2e, _sync_now(e2e, grant_id))
        assert second["status"] == "succeeded" and second["bundles"] == []
        assert len(e2e.records()) == records  # nothing new: nothing POSTed

        added = e2e.client.post(
            f"{stack.cms_url}/_sandbox/add_claims", json={"user": USER, "count": 3}
        ).json()["added"]
        third = _finished(e2e, _sync_now(e2e, grant_id))
        assert third["resources"]["ExplanationOfBenefit"]["new"] == 3
        stored = _stored_claims(e2e)
        assert len(stored) == 55 and set(stored.values()) == {1}
        assert set(added) <= set(stored)

        # Kill a worker mid-run: CMS answers slowly, so the run is surely under way when it dies.
        e2e.client.post(f"{stack.cms_url}/_sandbox/add_claims", json={"user": USER, "count": 2})
        e2e.cms_faults(latency_ms=1500)
        killed_run = _sync_now(e2e, grant_id)
        _until(lambda: _run(e2e, killed_run)["status"] == "running", "the run to start")
        stack.processes["worker-1"].send_signal(signal.SIGKILL)
        stack.processes["worker-1"].wait()
        e2e.cms_faults()
        _start_worker(stack, "worker-2")  # recovers the stalled job (heartbeat older than 4 s)

        def recovered() -> dict[str, Any] | None:
            runs = e2e.client.get(f"{stack.connector_url}/bluebutton/grants/{grant_id}/runs", headers=KEY)
            newest = runs.json()["runs"][0]
            return newest if newest["id"] > killed_run and newest["status"] == "succeeded" else None

        recovery = _until(recovered, "the recovered run")
        assert _run(e2e, killed_run)["status"] == "failed"
        assert recovery["resources"]["ExplanationOfBenefit"]["new"] == 2
        stored = _stored_claims(e2e)
        assert len(stored) == 57 and set(stored.values()) == {1}, stored.most_common(3)
    finally:
        e2e.close()


def test_a_post_in_flight_at_the_kill_is_sent_again_and_nothing_else(stack: Stack) -> None:
    """What connect's lack of idempotency costs: the one Bundle connect stored but whose answer
    the killed worker never read has no ledger row, so the recovered run sends its entries again.
    Measured here exactly: those entries appear twice in connect, nothing else does, nothing is lost."""
    e2e = Harness(stack)
    try:
        _start_worker(stack, "worker-1")
        body = authorize(stack.connector_url, USER, sync=True).json()
        _finished(e2e, body["run_id"])
        before = len(e2e.records())
        e2e.client.post(f"{stack.cms_url}/_sandbox/add_claims", json={"user": USER, "count": 2})
        e2e.connect_faults(latency_ms=600_000)  # connect stores, then holds its answer
        run_id = _sync_now(e2e, body["grant_id"])
        _until(lambda: len(e2e.records()) > before, "connect to store the Bundle in flight")
        stack.processes["worker-1"].send_signal(signal.SIGKILL)
        stack.processes["worker-1"].wait()
        e2e.connect_faults()
        in_flight = e2e.read_back(f"FHIR-R4:0:{e2e.records()[-1]['offset']}").bundle
        resent = {e["resource"]["id"] for e in in_flight["entry"]}
        _start_worker(stack, "worker-2")

        def recovered() -> dict[str, Any] | None:
            runs = e2e.client.get(
                f"{stack.connector_url}/bluebutton/grants/{body['grant_id']}/runs", headers=KEY
            )
            newest = runs.json()["runs"][0]
            return newest if newest["id"] > run_id and newest["status"] == "succeeded" else None

        recovery = _until(recovered, "the recovered run")
        assert recovery["resources"]["ExplanationOfBenefit"]["new"] == 2
        stored = _stored_claims(e2e)
        assert len(stored) == 54  # nothing lost
        assert {i for i, n in stored.items() if n > 1} == resent  # only the Bundle in flight, once more
        assert max(stored.values()) == 2
    finally:
        e2e.close()


def _prepare_race(database_url: str, grant_id: str, run_id: int) -> None:
    """A second job of the grant beside the waiting first run, under the same lock (what a
    recovered job and a new one could leave), and an access token due for refresh, so that each
    job, if it ran unguarded, would refresh with the same single-use token."""
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('bluebutton-sync', %s, 0, %s, NULL, %s, NULL)"
            "::procrastinate_job_to_defer_v1])",
            (SYNC_TASK, grant_id, Jsonb({"run_id": run_id})),
        )
        connection.execute(
            "UPDATE bluebutton_grants SET access_expires_at = now() WHERE id = %s", (grant_id,)
        )


def _jobs_left(database_url: str, grant_id: str) -> int:
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status IN ('todo', 'doing')",
            (grant_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_two_worker_processes_racing_for_one_grant_refresh_it_exactly_once(
    stack: Stack, database_url: str, token_keys: str
) -> None:
    """Refresh tokens are single-use: two runs of one grant at once would both refresh with the
    same token, and CMS would refuse the second (invalid_grant: the grant looks revoked). Two
    worker processes find two waiting jobs of one grant; its lock lets one run at a time."""
    e2e = Harness(stack)
    try:
        body = authorize(stack.connector_url, USER, sync=True).json()  # no worker yet: the run waits
        grant_id = body["grant_id"]
        _prepare_race(database_url, grant_id, body["run_id"])
        assert _jobs_left(database_url, grant_id) == 2
        assert e2e.client.get(f"{stack.cms_url}/_sandbox/stats").json()["token_calls"] == {
            "authorization_code": 1  # the enrolment
        }

        _start_worker(stack, "worker-1")
        _start_worker(stack, "worker-2")
        _until(lambda: _jobs_left(database_url, grant_id) == 0, "both jobs to finish")

        calls = e2e.client.get(f"{stack.cms_url}/_sandbox/stats").json()["token_calls"]
        assert calls == {"authorization_code": 1, "refresh_token": 1}, calls
        runs = e2e.client.get(f"{stack.connector_url}/bluebutton/grants/{grant_id}/runs", headers=KEY)
        done = runs.json()["runs"]
        assert [r["status"] for r in done] == ["succeeded"], done  # the second job found it done
        grant = e2e.client.get(f"{stack.connector_url}/bluebutton/grants/{grant_id}", headers=KEY).json()
        assert grant["state"] == "active"
        stored = _stored_claims(e2e)
        assert len(stored) == 52 and set(stored.values()) == {1}  # the second run stored nothing again
        assert all(stack.processes[name].poll() is None for name in ("worker-1", "worker-2"))
    finally:
        e2e.close()
