"""Delivering the outbox: procrastinate tasks on the sync worker's app.

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
- `recover_event_jobs` runs every minute: jobs of a worker whose heartbeat stopped (SIGKILL)
  are queued again, so a crash never strands an event (the sync sweep recovers sync jobs only).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import procrastinate
from procrastinate import JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from psycopg_pool import AsyncConnectionPool

from bluebutton.events import outbox
from bluebutton.events.nats import NatsPublisher, NatsUnavailableError
from bluebutton.events.webhooks import WebhookFailedError, WebhookSender
from bluebutton.outbound.tls import build_ssl_context
from bluebutton.settings import Settings

logger = logging.getLogger(__name__)

DELIVER_TASK = "bluebutton.deliver_event"
EXPIRING_TASK = "bluebutton.note_expiring_grants"
EXPIRING_CRON = "17 * * * *"
RECOVER_TASK = "bluebutton.recover_event_jobs"
PRUNE_TASK = "bluebutton.prune_events"
DISPATCH_ATTEMPTS = 10
NATS_TARGET = "nats"


class DeliveryFailedError(Exception):
    """An attempt failed; retried until the attempts are spent."""


class Backoff(BaseRetryStrategy):
    """`attempts` attempts in all, whatever failed (a lost database connection too: an event must
    not be stranded); the n-th retry waits `first_wait * 2**(n-1)` seconds."""

    def __init__(self, attempts: int, first_wait: float) -> None:
        self.attempts = attempts
        self.first_wait = first_wait

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if not isinstance(exception, Exception) or job.attempts + 1 >= self.attempts:
            return None
        wait = self.first_wait * 2**job.attempts
        return RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=wait))


class EventDelivery:
    """One process's event tasks; `pool` is set once the process's database is open."""

    def __init__(self, settings: Settings, app: procrastinate.App) -> None:
        self.settings = settings
        self.pool: AsyncConnectionPool | None = None
        context = build_ssl_context(settings)
        self.nats = NatsPublisher(settings, context) if settings.nats_url else None
        self.webhooks = WebhookSender(settings, context) if settings.webhook_targets else None
        backoff = Backoff(settings.webhook_attempts, settings.webhook_retry_wait_seconds)

        dispatch_backoff = Backoff(DISPATCH_ATTEMPTS, max(settings.webhook_retry_wait_seconds, 1.0))

        @app.task(name=outbox.DISPATCH_TASK, queue=outbox.QUEUE, retry=dispatch_backoff)
        async def dispatch_event(event_id: str) -> int:
            return await self.dispatch(uuid.UUID(event_id))

        @app.task(name=DELIVER_TASK, queue=outbox.QUEUE, pass_context=True, retry=backoff)
        async def deliver_event(job: JobContext, event_id: str, target: str) -> str:
            final = job.job.attempts + 1 >= backoff.attempts
            return await self.deliver(uuid.UUID(event_id), target, final=final)

        @app.periodic(cron=EXPIRING_CRON, periodic_id="expiring-grants")
        @app.task(name=EXPIRING_TASK, queue=outbox.QUEUE, queueing_lock=EXPIRING_TASK)
        async def note_expiring_grants(timestamp: int) -> int:
            return await outbox.note_expiring(self._pool())

        @app.periodic(cron="* * * * *", periodic_id="event-jobs")
        @app.task(name=RECOVER_TASK, queue=outbox.QUEUE, queueing_lock=RECOVER_TASK)
        async def recover_event_jobs(timestamp: int) -> int:
            return await self.recover_stalled()

        @app.periodic(cron="41 3 * * *", periodic_id="prune-events")
        @app.task(name=PRUNE_TASK, queue=outbox.QUEUE, queueing_lock=PRUNE_TASK)
        async def prune_events(timestamp: int) -> int:
            return await outbox.prune(self._pool(), settings.events_retention_days)

        self.app = app

    def _pool(self) -> AsyncConnectionPool:
        if self.pool is None:
            raise RuntimeError("grant keeping is not open in this process")
        return self.pool

    async def recover_stalled(self) -> int:
        """Queue again the event jobs of workers that stopped sending heartbeats."""
        manager = self.app.job_manager
        recovered = 0
        for task in (outbox.DISPATCH_TASK, DELIVER_TASK):
            stalled = await manager.get_stalled_jobs(
                task_name=task, seconds_since_heartbeat=self.settings.sync_stalled_seconds
            )
            for job in stalled:
                await manager.retry_job(job)
                recovered += 1
                logger.warning("re-queued event job %s: its worker stopped", job.id)
        return recovered

    def targets(self) -> list[str]:
        found = [NATS_TARGET] if self.nats else []
        return found + (list(self.webhooks.urls) if self.webhooks else [])

    async def dispatch(self, event_id: uuid.UUID) -> int:
        """One delivery job per target, once; returns how many were queued."""
        async with self._pool().connection() as connection, connection.transaction():
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
        pool = self._pool()
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
            raise DeliveryFailedError(str(e)) from e
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
