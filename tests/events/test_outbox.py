"""The outbox commits with its change: an event exists if and only if the change committed,
whether the transaction fails or its connection dies at commit (a crash)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bluebutton.events import outbox
from bluebutton.sync import grants, runs
from bluebutton.sync.service import SyncService
from tests.events.events import enrol_only, rows
from tests.sync.emulated import Upstreams, drain, open_service, sync_settings


@asynccontextmanager
async def opened(database_url: str, token_keys: str) -> AsyncIterator[SyncService]:
    """Grant keeping opened inside the test (not in a fixture: the pool's background workers
    must live on the test's event loop to replace a connection killed at COMMIT)."""
    upstreams = Upstreams()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            service.upstreams = upstreams  # type: ignore[attr-defined]
            yield service


async def _events(service: SyncService) -> list[str]:
    return [r[0] for r in await rows(service, "SELECT type FROM bluebutton_events ORDER BY occurred_at")]


async def _dispatch_jobs(service: SyncService) -> int:
    found = await rows(
        service, "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s", outbox.DISPATCH_TASK
    )
    return int(found[0][0])


async def _fault_at_commit(service: SyncService, action: str) -> None:
    """A deferred constraint trigger on grants: `action` runs at COMMIT, after the event row."""
    async with service.pool.connection() as connection:
        await connection.execute(
            f"CREATE FUNCTION bb_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {action}; "
            "RETURN NULL; END $$".encode()
        )
        await connection.execute(
            b"CREATE CONSTRAINT TRIGGER bb_fault AFTER INSERT OR UPDATE ON bluebutton_grants "
            b"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bb_fault()"
        )


async def _no_fault(service: SyncService) -> None:
    async with service.pool.connection() as connection:
        await connection.execute(b"DROP TRIGGER bb_fault ON bluebutton_grants")
        await connection.execute(b"DROP FUNCTION bb_fault()")


async def test_a_committed_change_has_its_event_and_dispatch_job(database_url: str, token_keys: str) -> None:
    async with opened(database_url, token_keys) as service:
        grant_id = await enrol_only(service, service.upstreams)  # type: ignore[attr-defined]
        assert await _events(service) == ["grant.created"]
        assert await _dispatch_jobs(service) == 1
        await grants.end(service.pool, grant_id, "expired")
        await grants.end(service.pool, grant_id, "expired")  # no change: no second event
        assert await _events(service) == ["grant.created", "grant.expired"]
        assert await _dispatch_jobs(service) == 2


@pytest.mark.parametrize(
    "action",
    [
        pytest.param("RAISE EXCEPTION 'injected failure at commit'", id="rolled-back"),
        pytest.param("PERFORM pg_terminate_backend(pg_backend_pid())", id="connection-killed"),
    ],
)
async def test_a_change_that_does_not_commit_leaves_no_event(
    database_url: str, token_keys: str, action: str
) -> None:
    async with opened(database_url, token_keys) as service:
        upstreams: Upstreams = service.upstreams  # type: ignore[attr-defined]
        await _fault_at_commit(service, action)
        with pytest.raises(psycopg.Error):
            await enrol_only(service, upstreams)
        assert await rows(service, "SELECT id FROM bluebutton_grants") == []
        assert await _events(service) == []
        assert await _dispatch_jobs(service) == 0

        await _no_fault(service)
        grant_id = await enrol_only(service, upstreams)
        await _fault_at_commit(service, action)
        with pytest.raises(psycopg.Error):
            await grants.end(service.pool, grant_id, "revoked")
        grant = await grants.get(service.pool, grant_id)
        assert grant is not None and grant.state == "active"
        assert await _events(service) == ["grant.created"]
        assert await _dispatch_jobs(service) == 1


async def _started_run(service: SyncService, grant_id: uuid.UUID) -> int:
    """A queued run and its job, taken by a worker that is not there (the run is `running`)."""
    async with service.pool.connection() as connection, connection.transaction():
        run_id, _ = await runs.request(connection, grant_id)
        job = await (
            await connection.execute("SELECT job_id FROM bluebutton_runs WHERE id = %s", (run_id,))
        ).fetchone()
        assert job is not None
        assert await runs.start(connection, run_id, job[0]) == grant_id
        await connection.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (job[0],))
    return run_id


async def test_a_run_that_fails_to_finish_leaves_no_run_event(database_url: str, token_keys: str) -> None:
    async with opened(database_url, token_keys) as service:
        grant_id = await enrol_only(service, service.upstreams)  # type: ignore[attr-defined]
        run_id = await _started_run(service, grant_id)
        async with service.pool.connection() as connection:
            await connection.execute(
                b"CREATE FUNCTION bb_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                b"RAISE EXCEPTION 'injected'; END $$"
            )
            await connection.execute(
                b"CREATE TRIGGER bb_fault BEFORE INSERT ON bluebutton_events "
                b"FOR EACH ROW EXECUTE FUNCTION bb_fault()"
            )
        with pytest.raises(psycopg.Error):
            async with service.pool.connection() as connection, connection.transaction():
                await runs.finish(connection, run_id, "succeeded", {}, [])
        row = await runs.get(service.pool, run_id)
        assert row is not None and row["status"] == "running"  # the run's change rolled back with it
        async with service.pool.connection() as connection:
            await connection.execute(b"DROP TRIGGER bb_fault ON bluebutton_events")
        async with service.pool.connection() as connection, connection.transaction():
            await runs.finish(connection, run_id, "succeeded", {"Coverage": {"fetched": 1}}, [])
        assert await _events(service) == ["grant.created", "run.succeeded"]


async def test_a_run_left_by_a_killed_worker_is_told_failed(database_url: str, token_keys: str) -> None:
    async with opened(database_url, token_keys) as service:
        grant_id = await enrol_only(service, service.upstreams)  # type: ignore[attr-defined]
        stale = await _started_run(service, grant_id)
        assert await service.jobs.reconcile() == 1  # its job has no live worker: ended, grant requeued
        failed = await rows(service, "SELECT body FROM bluebutton_events WHERE type = 'run.failed'")
        assert [b[0]["run_id"] for b in failed] == [stale]
        assert "stopped" in failed[0][0]["reason"]


async def test_a_dispatch_run_twice_queues_each_delivery_once(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    settings = sync_settings(database_url, token_keys, nats_url="nats://127.0.0.1:1")
    with upstreams.router():
        async with open_service(settings) as service:
            await enrol_only(service, upstreams)
            (event_id,) = (r[0] for r in await rows(service, "SELECT id FROM bluebutton_events"))
            assert service.events is not None
            assert await service.events.dispatch(event_id) == 1
            assert await service.events.dispatch(event_id) == 0
            assert await service.events.dispatch(uuid.uuid4()) == 0
            jobs = await rows(
                service,
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'events:deliver_event'",
            )
            assert jobs == [(1,)]


async def test_expiring_is_told_at_30_days_then_at_7_once_each(database_url: str, token_keys: str) -> None:
    async with opened(database_url, token_keys) as service:
        grant_id = await enrol_only(service, service.upstreams)  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        ends = now + timedelta(days=40)
        async with service.pool.connection() as connection:
            await connection.execute(
                "UPDATE bluebutton_grants SET access_grant_expiration = %s WHERE id = %s", (ends, grant_id)
            )
        assert await outbox.note_expiring(service.pool, now) == 0  # 40 days away
        assert await outbox.note_expiring(service.pool, now + timedelta(days=11)) == 1  # 29 days
        assert await outbox.note_expiring(service.pool, now + timedelta(days=12)) == 0
        assert await outbox.note_expiring(service.pool, now + timedelta(days=34)) == 1  # 6 days
        assert await outbox.note_expiring(service.pool, now + timedelta(days=35)) == 0
        assert await outbox.note_expiring(service.pool, now + timedelta(days=41)) == 0  # ended: not expiring
        bodies = [
            r[0]
            for r in await rows(service, "SELECT body FROM bluebutton_events WHERE type = 'grant.expiring'")
        ]
        assert sorted("within 30 days" in b["reason"] for b in bodies) == [False, True]
        assert all("within 7 days" in b["reason"] or "within 30 days" in b["reason"] for b in bodies)

        renewed = ends + timedelta(days=396)  # re-authorized: a new end date is told again
        async with service.pool.connection() as connection:
            await connection.execute(
                "UPDATE bluebutton_grants SET access_grant_expiration = %s WHERE id = %s", (renewed, grant_id)
            )
        assert await outbox.note_expiring(service.pool, renewed - timedelta(days=3)) == 1
        await grants.end(service.pool, grant_id, "disconnected")
        assert await outbox.note_expiring(service.pool, renewed - timedelta(days=20)) == 0
        await drain(service)


async def test_old_settled_events_are_pruned_and_pending_ones_kept(
    database_url: str, token_keys: str
) -> None:
    async with opened(database_url, token_keys) as service:
        upstreams: Upstreams = service.upstreams  # type: ignore[attr-defined]
        for user in (2, 3, 4):
            await enrol_only(service, upstreams, user)
        old, pending, recent = (
            r[0] for r in await rows(service, "SELECT id FROM bluebutton_events ORDER BY id")
        )
        async with service.pool.connection() as connection:
            await connection.execute(
                "UPDATE bluebutton_events SET dispatched_at = now(), "
                "occurred_at = now() - interval '100 days' WHERE id = ANY(%s)",
                ([old, pending],),
            )
            await connection.execute(
                "UPDATE bluebutton_events SET dispatched_at = now() WHERE id = %s", (recent,)
            )
            await connection.execute(
                "INSERT INTO bluebutton_event_deliveries (event_id, target, status) VALUES "
                "(%s, 'nats', 'delivered'), (%s, 'nats', 'retrying')",
                (old, pending),
            )
        assert await outbox.prune(service.pool, 90) == 1
        left = {r[0] for r in await rows(service, "SELECT id FROM bluebutton_events")}
        assert left == {pending, recent}
        assert await rows(service, "SELECT event_id FROM bluebutton_event_deliveries") == [(pending,)]
