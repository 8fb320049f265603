"""procrastinate around the runs: one run of a grant at a time, at most one waiting, recovery of a
dead worker's job, the sweep of due grants, retries of transient failures."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.types.json import Jsonb

from bluebutton.sandbox.cms.faults import Faults
from bluebutton.sync import grants, runs
from bluebutton.sync.runs import SYNC_TASK as TASK
from tests.sync.emulated import Upstreams, drain, open_service, run_once, sync_settings

USER = 2


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


async def _count(service, query: str, *args: object) -> int:
    async with service.pool.connection() as connection:
        row = await (await connection.execute(query, args)).fetchone()
    return int(row[0])


async def test_a_second_request_while_one_waits_gets_the_same_run(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, first = await service.enrol(upstreams.authorize(USER))
            assert await service.sync_now(grant_id) == first
            assert await service.jobs.request_run(grant_id) == first
            waiting = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND task_name = %s"
            assert await _count(service, waiting, TASK) == 1
            await drain(service)
            done = await runs.get(service.pool, first)
            assert done is not None and done["status"] == "succeeded"


async def test_two_workers_never_run_one_grant_at_once(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys, sync_concurrency=2)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            await drain(service)
            async with service.pool.connection() as connection:  # the next run must refresh
                await connection.execute(
                    "UPDATE bluebutton_grants SET access_expires_at = now() WHERE id = %s", (grant_id,)
                )
            key = str(grant_id)
            run_id = await service.jobs.request_run(grant_id)
            async with service.pool.connection() as connection:
                for _ in range(3):  # three more jobs of the grant's run waiting at once, one lock
                    await connection.execute(
                        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('bluebutton-sync', %s, 0, %s, NULL, "
                        "%s, NULL)::procrastinate_job_to_defer_v1])",
                        (TASK, key, Jsonb({"run_id": run_id})),
                    )
            waiting = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            for _ in range(50):  # a worker that finds only locked jobs stops: start them again
                await asyncio.gather(drain(service), drain(service), drain(service))
                if await _count(service, waiting) == 0:
                    break
            done = [r for r in await runs.of_grant(service.pool, grant_id, 10) if r["status"] == "succeeded"]
            assert len(done) == 2  # the enrolment's run and the one the four jobs shared
            spans = sorted((r["started_at"], r["finished_at"]) for r in done)
            for (_, finished), (started, _) in itertools.pairwise(spans):
                assert finished <= started, spans
            assert len(upstreams.requests_to("/v2/o/token/")) == 1  # one refresh for the three


async def test_a_dead_workers_job_is_recovered_and_stores_nothing_twice(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    settings = sync_settings(database_url, token_keys, sync_stalled_seconds=5)
    with upstreams.router():
        async with open_service(settings) as service:
            grant_id, run_id = await service.enrol(upstreams.authorize(USER))
            # What a SIGKILLed worker leaves: its job `doing`, its heartbeat old, its run `running`.
            async with service.pool.connection() as connection:
                worker = await (
                    await connection.execute(
                        "INSERT INTO procrastinate_workers (last_heartbeat) "
                        "VALUES (now() - interval '1 hour') RETURNING id"
                    )
                ).fetchone()
                assert worker is not None
                await connection.execute(
                    "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE task_name = %s",
                    (worker[0], TASK),
                )
                await connection.execute(
                    "UPDATE bluebutton_runs SET status = 'running', started_at = now() WHERE id = %s",
                    (run_id,),
                )
            assert await service.jobs.reconcile() == 1
            await drain(service)
            killed = await runs.get(service.pool, run_id)
            assert killed is not None and killed["status"] == "failed"
            assert "stopped" in killed["issues"][0]["diagnostics"]
            assert len([r for r in await runs.of_grant(service.pool, grant_id, 10)]) == 2
            latest = (await runs.of_grant(service.pool, grant_id, 1))[0]
            assert latest["status"] == "succeeded"
            ids = upstreams.stored_ids()
            assert len(ids) == len(set(ids)) == 12


async def test_the_sweep_queues_due_grants_once(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            await drain(service)
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.next_sync_at is not None
            assert grant.next_sync_at > datetime.now(UTC) + timedelta(hours=23)
            assert await service.jobs.sweep() == 0
            async with service.pool.connection() as connection:
                await connection.execute(
                    "UPDATE bluebutton_grants SET next_sync_at = now() - interval '1 second' WHERE id = %s",
                    (grant_id,),
                )
            assert await service.jobs.sweep() == 1
            assert await service.jobs.sweep() == 0  # queued: postponed, not queued twice
            await drain(service)
            assert [r["status"] for r in await runs.of_grant(service.pool, grant_id, 5)] == ["succeeded"] * 2


async def test_a_transient_failure_backs_off_and_is_retried(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    settings = sync_settings(
        database_url, token_keys, sync_retry_attempts=2, sync_retry_wait_seconds=600, cms_retry_attempts=1
    )
    with upstreams.router():
        async with open_service(settings) as service:
            grant_id, run_id = await service.enrol(upstreams.authorize(USER))
            upstreams.cms_app.state.faults.faults = Faults(server_errors=1000, server_error_status=503)
            await drain(service)
            run = await runs.get(service.pool, run_id)
            assert run is not None and run["status"] == "failed"
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.next_sync_at is not None
            assert (grant.state, grant.consecutive_failures) == ("failing", 1)
            assert datetime.now(UTC) < grant.next_sync_at <= datetime.now(UTC) + timedelta(seconds=60)
            retry = "SELECT count(*) FROM bluebutton_runs WHERE status = 'queued' AND attempt = 2"
            assert await _count(service, retry) == 1  # the next attempt, 600 s later
            assert upstreams.posts == []
            # pressing Sync now answers the waiting retry and brings it forward
            waiting = (await runs.of_grant(service.pool, grant_id, 1))[0]["id"]
            assert await service.sync_now(grant_id) == waiting

            upstreams.cms_app.state.faults.faults = Faults()
            await drain(service)
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None
            assert (grant.state, grant.consecutive_failures) == ("active", 0)
            assert len(upstreams.stored_ids()) == 12
            assert (await run_once(service, grant_id))["status"] == "succeeded"


async def test_an_aborted_jobs_run_ends_and_its_grant_is_queued_again(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    """What a worker cut off from its database leaves: the job `aborted`, its run `running`. The
    reconcile (every sweep and worker start) ends the run honestly and queues the grant again;
    queueing moved no `next_sync_at`, the run's end does."""
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, run_id = await service.enrol(upstreams.authorize(USER))
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.next_sync_at is None  # queued: not moved
            async with service.pool.connection() as connection:
                await connection.execute(
                    "UPDATE procrastinate_jobs SET status = 'aborted' WHERE task_name = %s", (TASK,)
                )
                await connection.execute(
                    "UPDATE bluebutton_runs SET status = 'running', started_at = now() WHERE id = %s",
                    (run_id,),
                )
            assert await service.jobs.reconcile() == 1
            ended = await runs.get(service.pool, run_id)
            assert ended is not None and ended["status"] == "failed"
            assert "stopped" in ended["issues"][-1]["diagnostics"]
            await drain(service)
            latest = (await runs.of_grant(service.pool, grant_id, 1))[0]
            assert latest["id"] != run_id and latest["status"] == "succeeded"
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.next_sync_at is not None
            assert grant.next_sync_at > datetime.now(UTC) + timedelta(hours=23)  # from the run's end
            assert len(upstreams.stored_ids()) == len(set(upstreams.stored_ids())) == 12
