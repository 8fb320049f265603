"""The outbox: an event row written in the transaction of the change that causes it.

`emit` inserts the event and defers its `dispatch_event` job through procrastinate's own SQL
function on the same connection, so the event, its job and the change commit or roll back
together: a crash never loses an event of a committed change, nor invents one for a rolled-back
change. Delivery afterwards is at least once; consumers drop repeats by the event id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

EventType = Literal[
    "grant.created",
    "grant.expiring",
    "grant.expired",
    "grant.revoked",
    "grant.disconnected",
    "run.succeeded",
    "run.partial",
    "run.failed",
]

# The sync worker's queue (bluebutton.sync.jobs.QUEUE): the worker that runs syncs delivers events.
QUEUE = "bluebutton-sync"
DISPATCH_TASK = "events:dispatch_event"  # delivery.dispatch_event, namespaced
EXPIRING_DAYS = (30, 7)

_DEFER = (
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, 0, NULL, NULL, %s, NULL)"
    "::procrastinate_job_to_defer_v1])"
)


async def defer_in(connection: AsyncConnection, task: str, args: dict[str, Any]) -> None:
    """Queue a procrastinate job inside the caller's transaction (procrastinate's `defer_async`
    would use a connection of its own and commit apart)."""
    await connection.execute(_DEFER, (QUEUE, task, Jsonb(args)))


async def emit(
    connection: AsyncConnection,
    event_type: EventType,
    grant_id: uuid.UUID,
    patient: str,
    *,
    run_id: int | None = None,
    counts: dict[str, Any] | None = None,
    reason: str | None = None,
    dedupe_key: str | None = None,
) -> uuid.UUID | None:
    """Record an event in the caller's transaction; None when `dedupe_key` was already used."""
    event_id = uuid.uuid4()
    occurred_at = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": str(event_id),
        "type": event_type,
        "occurred_at": occurred_at.isoformat(),
        "grant_id": str(grant_id),
        "patient": patient,
    }
    if run_id is not None:
        body["run_id"] = run_id
    if counts is not None:
        body["counts"] = counts
    if reason is not None:
        body["reason"] = reason
    row = await (
        await connection.execute(
            "INSERT INTO bluebutton_events (id, type, grant_id, run_id, occurred_at, body, dedupe_key) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
            (event_id, event_type, grant_id, run_id, occurred_at, Jsonb(body), dedupe_key),
        )
    ).fetchone()
    if row is None:
        return None
    await defer_in(connection, DISPATCH_TASK, {"event_id": str(event_id)})
    return event_id


async def note_expiring(pool: AsyncConnectionPool, now: datetime | None = None) -> int:
    """`grant.expiring` for each syncing grant whose data-access grant ends within 30 days, and
    again within 7 days: once each per expiration date (a renewed grant is told again)."""
    now = now or datetime.now(UTC)
    emitted = 0
    async with pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT id, patient, access_grant_expiration FROM bluebutton_grants "
                "WHERE state IN ('active', 'failing') AND access_grant_expiration > %s "
                "AND access_grant_expiration <= %s",
                (now, now + timedelta(days=max(EXPIRING_DAYS))),
            )
        ).fetchall()
    for grant_id, patient, expiration in rows:
        days = min(d for d in EXPIRING_DAYS if expiration <= now + timedelta(days=d))
        async with pool.connection() as connection, connection.transaction():
            made = await emit(
                connection,
                "grant.expiring",
                grant_id,
                patient,
                reason=f"the data-access grant ends at {expiration.isoformat()}, within {days} days; "
                "the beneficiary must authorize again before then (GET /bluebutton/authorize?sync=true)",
                dedupe_key=f"grant.expiring:{days}:{grant_id}:{expiration.isoformat()}",
            )
        emitted += made is not None
    return emitted


_PRUNE_DELIVERIES = (
    "DELETE FROM bluebutton_event_deliveries d USING bluebutton_events e WHERE d.event_id = e.id "
    "AND e.occurred_at < now() - make_interval(days => %(days)s) AND e.dispatched_at IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM bluebutton_event_deliveries p WHERE p.event_id = e.id "
    "AND p.status IN ('pending', 'retrying'))"
)
_PRUNE_EVENTS = (
    "DELETE FROM bluebutton_events e "
    "WHERE e.occurred_at < now() - make_interval(days => %(days)s) AND e.dispatched_at IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM bluebutton_event_deliveries p WHERE p.event_id = e.id "
    "AND p.status IN ('pending', 'retrying'))"
)


async def prune(pool: AsyncConnectionPool, days: int) -> int:
    """Delete events older than `days` whose every delivery is over (delivered or failed)."""
    async with pool.connection() as connection, connection.transaction():
        await connection.execute(_PRUNE_DELIVERIES, {"days": days})
        deleted = await connection.execute(_PRUNE_EVENTS, {"days": days})
        return deleted.rowcount


async def body_of(connection: AsyncConnection, event_id: uuid.UUID) -> dict[str, Any] | None:
    row = await (
        await connection.execute("SELECT body FROM bluebutton_events WHERE id = %s", (event_id,))
    ).fetchone()
    return dict(row[0]) if row else None


async def of_grant(pool: AsyncConnectionPool, grant_id: uuid.UUID) -> list[dict[str, Any]]:
    """A grant's events, oldest first (tests, the console)."""
    async with pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT body FROM bluebutton_events WHERE grant_id = %s ORDER BY occurred_at, id", (grant_id,)
            )
        ).fetchall()
    return [dict(r[0]) for r in rows]
