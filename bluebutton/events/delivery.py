"""Delivering the outbox: procrastinate tasks on a blueprint, run by the sync worker.

- `dispatch_event(event_id)`, deferred with the event, creates one delivery row and one
  `deliver_event(event_id, target)` job per configured target, in one transaction (so a retried
  dispatch never doubles them), then marks the event dispatched.
- `deliver_event` sends to NATS or one webhook URL; a failed attempt is retried with exponential
  backoff (`BLUEBUTTON_WEBHOOK_ATTEMPTS` attempts in all, waits of
  `BLUEBUTTON_WEBHOOK_RETRY_WAIT_SECONDS` doubling); a delivered target is never sent again by a
  later run of the job.
- `note_expiring_grants` runs hourly and emits `grant.expiring` (30 and 7 days before the end).
- `prune_events` runs daily: events older than `BLUEBUTTON_EVENTS_RETENTION_DAYS` whose
  deliveries are over are deleted.
- The sync sweep's reconcile (every minute) queues again the event jobs of a worker whose
  heartbeat stopped (SIGKILL), so a crash never strands an event.

The tasks read the process's `EventDelivery` from the worker's context; the retry strategy does
what the task's `RetryLater` says, since only the task knows the settings.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import procrastinate
from procrastinate import JobContext
from procrastinate.jobs import Job
from procrastinate.manager import JobManager
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from psycopg_pool import AsyncConnectionPool

from bluebutton.events import outbox
from bluebutton.events.nats import NatsPublisher, NatsUnavailableError
from bluebutton.events.webhooks import WebhookFailedError, WebhookSender
from bluebutton.outbound.tls import build_ssl_context
from bluebutton.settings import Settings

logger = logging.getLogger(__name__)

DELIVER_TASK = "events:deliver_event"
EXPIRING_CRON = "17 * * * *"
DISPATCH_ATTEMPTS = 10
DISPATCH_FIRST_WAIT_SECONDS = 1.0
NATS_TARGET = "nats"
EVENTS = "events"  # the key of the process's EventDelivery in the worker's additional_context


class RetryLater(Exception):
    """An attempt failed and is worth another at `retry_at` (None: the attempts are spent)."""

    def __init__(self, message: str, retry_at: datetime | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class DeliveryFailedError(RetryLater):
    """A delivery attempt failed."""


class RetryAsTold(BaseRetryStrategy):
    """The task decides (it knows the settings through its context): retry at the time its
    `RetryLater` carries, never otherwise."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, RetryLater) and exception.retry_at is not None:
            return RetryDecision(retry_at=exception.retry_at)
        return None


def retry_at(attempts_so_far: int, attempts: int, first_wait: float) -> datetime | None:
    """`attempts` in all; the n-th retry waits `first_wait * 2**(n-1)` seconds."""
    if attempts_so_far + 1 >= attempts:
        return None
    return datetime.now(UTC) + timedelta(seconds=first_wait * 2**attempts_so_far)


blueprint = procrastinate.Blueprint()

# Older than a minute: a job deferred in a transaction that has not committed yet is not orphaned.
_ORPHAN_EVENTS = (
    "SELECT e.id FROM bluebutton_events e WHERE e.dispatched_at IS NULL "
    "AND e.occurred_at < now() - interval '1 minute' AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j "
    "WHERE j.task_name = %s AND j.args->>'event_id' = e.id::text AND j.status IN ('todo', 'doing'))"
)
_ORPHAN_DELIVERIES = (
    "SELECT d.event_id, d.target FROM bluebutton_event_deliveries d JOIN bluebutton_events e "
    "ON e.id = d.event_id WHERE d.status IN ('pending', 'retrying') "
    "AND e.dispatched_at < now() - interval '1 minute' AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j "
    "WHERE j.task_name = %s AND j.args->>'event_id' = d.event_id::text AND j.args->>'target' = d.target "
    "AND j.status IN ('todo', 'doing'))"
)


def delivery_of(context: JobContext) -> EventDelivery:
    found = context.additional_context.get(EVENTS)
    if not isinstance(found, EventDelivery):
        raise RuntimeError("this worker was started without event delivery in its context")
    return found


@blueprint.task(name="dispatch_event", queue=outbox.QUEUE, pass_context=True, retry=RetryAsTold())
async def dispatch_event(context: JobContext, event_id: str) -> int:
    events = delivery_of(context)
    try:
        return await events.dispatch(uuid.UUID(event_id))
    except Exception as e:  # a lost database too: an event must not be stranded
        wait = max(events.settings.webhook_retry_wait_seconds, DISPATCH_FIRST_WAIT_SECONDS)
        raise RetryLater(type(e).__name__, retry_at(context.job.attempts, DISPATCH_ATTEMPTS, wait)) from e


@blueprint.task(name="deliver_event", queue=outbox.QUEUE, pass_context=True, retry=RetryAsTold())
async def deliver_event(context: JobContext, event_id: str, target: str) -> str:
    events = delivery_of(context)
    settings = events.settings
    later = retry_at(context.job.attempts, settings.webhook_attempts, settings.webhook_retry_wait_seconds)
    try:
        return await events.deliver(uuid.UUID(event_id), target, final=later is None)
    except DeliveryFailedError as e:
        raise DeliveryFailedError(str(e), later) from e
    except Exception as e:
        raise RetryLater(type(e).__name__, later) from e


@blueprint.periodic(cron=EXPIRING_CRON, periodic_id="expiring-grants")
@blueprint.task(name="note_expiring_grants", queue=outbox.QUEUE, pass_context=True, queueing_lock="expiring")
async def note_expiring_grants(context: JobContext, timestamp: int) -> int:
    return await outbox.note_expiring(delivery_of(context).pool)


@blueprint.periodic(cron="41 3 * * *", periodic_id="prune-events")
@blueprint.task(name="prune_events", queue=outbox.QUEUE, pass_context=True, queueing_lock="prune")
async def prune_events(context: JobContext, timestamp: int) -> int:
    events = delivery_of(context)
    return await outbox.prune(events.pool, events.settings.events_retention_days)


class EventDelivery:
    """One process's event delivery: its NATS and webhook clients and the database pool."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool) -> None:
        self.settings = settings
        self.pool = pool
        context = build_ssl_context(settings)
        self.nats = NatsPublisher(settings, context) if settings.nats_url else None
        self.webhooks = WebhookSender(settings, context) if settings.webhook_targets else None

    async def recover_stalled(self, manager: JobManager) -> int:
        """Queue again the event jobs of workers that stopped sending heartbeats (the grant
        keeping's reconcile calls this every sweep)."""
        recovered = 0
        for task in (outbox.DISPATCH_TASK, DELIVER_TASK):
            stalled = await manager.get_stalled_jobs(
                task_name=task, seconds_since_heartbeat=self.settings.sync_stalled_seconds
            )
            for job in stalled:
                await manager.retry_job(job)
                recovered += 1
                logger.warning("re-queued event job %s: its worker stopped", job.id)
        return recovered + await self.requeue_orphans()

    async def requeue_orphans(self) -> int:
        """Events and deliveries left without a live job (a job aborted when its worker lost the
        database, or lost with it) are queued again; both tasks are idempotent, so a spare job
        costs nothing and a missing one would strand an event."""
        async with self.pool.connection() as connection, connection.transaction():
            events = await (await connection.execute(_ORPHAN_EVENTS, (outbox.DISPATCH_TASK,))).fetchall()
            for (event_id,) in events:
                await outbox.defer_in(connection, outbox.DISPATCH_TASK, {"event_id": str(event_id)})
            targets = await (await connection.execute(_ORPHAN_DELIVERIES, (DELIVER_TASK,))).fetchall()
            for event_id, target in targets:
                await outbox.defer_in(connection, DELIVER_TASK, {"event_id": str(event_id), "target": target})
        if events or targets:
            logger.warning(
                "re-queued %d event(s) and %d delivery(ies) left without a job", len(events), len(targets)
            )
        return len(events) + len(targets)

    def targets(self) -> list[str]:
        found = [NATS_TARGET] if self.nats else []
        return found + (list(self.webhooks.urls) if self.webhooks else [])

    async def dispatch(self, event_id: uuid.UUID) -> int:
        """One delivery job per target, once; returns how many were queued."""
        async with self.pool.connection() as connection, connection.transaction():
            row = await (
                await connection.execute(
                    "SELECT dispatched_at FROM bluebutton_events WHERE id = %s FOR UPDATE", (event_id,)
                )
            ).fetchone()
            if row is None or row[0] is not None:
                return 0
            targets = self.targets()
            for target in targets:
                await connection.execute(
                    "INSERT INTO bluebutton_event_deliveries (event_id, target) VALUES (%s, %s)",
                    (event_id, target),
                )
                await outbox.defer_in(connection, DELIVER_TASK, {"event_id": str(event_id), "target": target})
            await connection.execute(
                "UPDATE bluebutton_events SET dispatched_at = now() WHERE id = %s", (event_id,)
            )
        return len(targets)

    async def deliver(self, event_id: uuid.UUID, target: str, *, final: bool) -> str:
        pool = self.pool
        async with pool.connection() as connection:
            body = await outbox.body_of(connection, event_id)
            row = await (
                await connection.execute(
                    "SELECT status FROM bluebutton_event_deliveries WHERE event_id = %s AND target = %s",
                    (event_id, target),
                )
            ).fetchone()
        if body is None or row is None or row[0] == "delivered":
            return "skipped"
        payload = orjson.dumps(body)
        try:
            await self._send(target, str(event_id), body["type"], payload)
        except (NatsUnavailableError, WebhookFailedError) as e:
            status = "failed" if final else "retrying"
            await self._record(pool, event_id, target, status, str(e))
            logger.warning("event %s to %s: attempt failed (%s); %s", event_id, target, e, status)
            raise DeliveryFailedError(str(e), None) from e
        await self._record(pool, event_id, target, "delivered", None)
        return "delivered"

    async def _send(self, target: str, event_id: str, event_type: str, payload: bytes) -> None:
        if target == NATS_TARGET:
            if self.nats is None:
                raise NatsUnavailableError("BLUEBUTTON_NATS_URL is no longer set")
            await self.nats.publish(event_id, event_type, payload)
            return
        if self.webhooks is None or target not in self.webhooks.urls:
            raise WebhookFailedError("this webhook URL is no longer in BLUEBUTTON_WEBHOOK_URLS")
        await self.webhooks.post(target, event_id, payload)

    async def _record(
        self, pool: AsyncConnectionPool, event_id: uuid.UUID, target: str, status: str, error: str | None
    ) -> None:
        async with pool.connection() as connection:
            await connection.execute(
                "UPDATE bluebutton_event_deliveries SET status = %s, attempts = attempts + 1, "
                "last_error = %s, delivered_at = CASE WHEN %s = 'delivered' THEN now() END "
                "WHERE event_id = %s AND target = %s",
                (status, error, status, event_id, target),
            )

    async def aclose(self) -> None:
        if self.nats is not None:
            await self.nats.aclose()
        if self.webhooks is not None:
            await self.webhooks.aclose()
