"""The procrastinate app: the `sync_grant` task, the periodic sweep and stalled-job recovery.

- `sync_grant(grant_id)` is deferred with `lock=<grant id>` (never two runs of one grant at once,
  on any machine: refresh tokens are single-use) and `queueing_lock=<grant id>` (at most one
  waiting). Its only argument is the grant id. Transient failures are retried with backoff.
- `sweep_due_grants` runs every minute (`BLUEBUTTON_SYNC_SWEEP_CRON`), deferred once per period
  however many workers run; it re-queues jobs of workers that stopped sending heartbeats (killed)
  and defers a run for every due grant.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import procrastinate
from procrastinate import JobContext, RetryStrategy
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Status

from bluebutton.settings import Settings
from bluebutton.sync import grants, runs
from bluebutton.sync.context import SyncContext
from bluebutton.sync.errors import TransientRunError
from bluebutton.sync.runner import run_grant

logger = logging.getLogger(__name__)

QUEUE = "bluebutton-sync"
TASK = "bluebutton.sync_grant"
SWEEP_TASK = "bluebutton.sweep_due_grants"
SWEEP_BATCH = 5000
STARTING_POLLS = 200


class SyncJobs:
    """One process's procrastinate app, bound to that process's `SyncContext` once it is open."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context: SyncContext | None = None
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector())
        retry: RetryStrategy | bool = False
        if settings.sync_retry_attempts:
            retry = RetryStrategy(
                max_attempts=settings.sync_retry_attempts,
                wait=settings.sync_retry_wait_seconds,
                exponential_wait=2,
                retry_exceptions={TransientRunError},
            )

        @self.app.task(name=TASK, queue=QUEUE, pass_context=True, retry=retry)
        async def sync_grant(job: JobContext, grant_id: str) -> str:
            assert job.job.id is not None
            return await run_grant(self._context(), uuid.UUID(grant_id), job.job.id)

        @self.app.periodic(cron=settings.sync_sweep_cron, periodic_id="due-grants")
        @self.app.task(name=SWEEP_TASK, queue=QUEUE, queueing_lock=SWEEP_TASK)
        async def sweep_due_grants(timestamp: int) -> int:
            return await self.sweep()

        self.sync_grant = sync_grant

    def _context(self) -> SyncContext:
        if self.context is None:
            raise RuntimeError("grant keeping is not open in this process")
        return self.context

    async def request_run(self, grant_id: uuid.UUID) -> int:
        """Queue a run of the grant (or find the one already waiting); returns its run id."""
        key = str(grant_id)
        job_id: int | None = None
        while job_id is None:
            try:
                job_id = await self.sync_grant.configure(lock=key, queueing_lock=key).defer_async(
                    grant_id=key
                )
            except AlreadyEnqueued:
                job_id = await self._waiting_job(key)  # None: it started meanwhile; defer anew
        pool = self._context().pool
        async with pool.connection() as connection, connection.transaction():
            run_id = await runs.queue(connection, grant_id, job_id)
            await grants.postpone(connection, grant_id, self.settings.sync_interval_seconds)
        for _ in range(STARTING_POLLS):
            if run_id is not None:
                return run_id
            # The job started before its run was queued: the run it opens is the one asked for.
            await asyncio.sleep(0.05)
            async with pool.connection() as connection:
                run_id = await runs.latest_of_job(connection, job_id)
        raise RuntimeError(f"sync job {job_id} started but opened no run")

    async def _waiting_job(self, key: str) -> int | None:
        async with self._context().pool.connection() as connection:
            row = await (
                await connection.execute(
                    "SELECT id FROM procrastinate_jobs WHERE queueing_lock = %s AND status = 'todo'", (key,)
                )
            ).fetchone()
        return int(row[0]) if row else None

    async def recover_stalled(self) -> int:
        """Re-queue runs whose worker stopped sending heartbeats (SIGKILL, lost machine)."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            task_name=TASK, seconds_since_heartbeat=self.settings.sync_stalled_seconds
        )
        recovered = 0
        for job in stalled:
            assert job.id is not None
            try:
                await manager.retry_job(job)
                recovered += 1
                logger.warning("re-queued sync job %d: its worker stopped", job.id)
            except Exception:  # another run of the grant is already waiting: that one will do
                await manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
                logger.warning("closed sync job %d of a stopped worker; a newer run is queued", job.id)
        return recovered

    async def sweep(self) -> int:
        """Queue a run for every due grant; returns how many."""
        await self.recover_stalled()
        due = await grants.due(self._context().pool, SWEEP_BATCH)
        for grant_id in due:
            await self.request_run(grant_id)
        if due:
            logger.info("queued runs for %d due grant(s)", len(due))
        return len(due)

    async def run_worker(
        self, *, install_signal_handlers: bool, name: str = "bluebutton-sync", wait: bool = True
    ) -> None:
        """Process sync jobs until cancelled (standalone: SIGINT/SIGTERM); `wait=False` stops when
        none is left."""
        await self.recover_stalled()
        options: dict[str, Any] = {
            "queues": [QUEUE],
            "name": name,
            "concurrency": self.settings.sync_concurrency,
            "install_signal_handlers": install_signal_handlers,
            "update_heartbeat_interval": self.settings.sync_heartbeat_seconds,
            "stalled_worker_timeout": self.settings.sync_stalled_seconds,
            "shutdown_graceful_timeout": 10.0,
            "wait": wait,
        }
        await self.app.run_worker_async(**options)
