"""One process's grant keeping: queueing runs, recovering what a lost worker or database left,
the sweep, and the worker that survives its database going away.

- `request_run` writes the run and its job in one transaction (`runs.request`); any number of
  concurrent requests for one grant make one run.
- `reconcile` ends every open run with no live job behind it (its worker killed, its job aborted
  or lost with the database) as `failed`, saying why, and queues its grant again; it re-queues
  event jobs of workers that stopped. The sweep and every (re)start of a worker run it.
- `run_worker` supervises procrastinate's worker: when the database goes, procrastinate stops
  its worker (a side task fails); this loop waits for the database with backoff, writes what
  the journal kept, reconciles and starts the worker again, in the same process. Only a
  configuration error (the server refuses our credentials or database name) ends it, raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import procrastinate
from procrastinate.jobs import Status

from bluebutton.errors import DatabaseUnavailableError
from bluebutton.events.delivery import EventDelivery
from bluebutton.settings import Settings
from bluebutton.sync import grants, runs
from bluebutton.sync.context import SyncContext
from bluebutton.sync.database import misconfigured, ping, unreachable
from bluebutton.sync.journal import DatabaseWatch, Journal, Pending, backoff

logger = logging.getLogger(__name__)

SWEEP_BATCH = 5000
OPERATOR_WAIT_SECONDS = 3.0
KEEPING = "keeping"  # the key of this object in the worker's additional_context
EVENTS = "events"
STOPPED = (
    "the worker running this run stopped (killed, or cut off from the database) before it ended; "
    "what connect acknowledged is recorded and will not be sent again; a new run is queued"
)
UNREACHABLE = (
    "the database was unreachable during the run; what connect acknowledged is recorded and will "
    "not be sent again; a new run is queued"
)

T = TypeVar("T")


class WorkerState:
    """What `/health` reports about this process's worker."""

    def __init__(self) -> None:
        self.running = False
        self.restarts = 0


@dataclass
class Keeping:
    ctx: SyncContext
    app: procrastinate.App
    events: EventDelivery
    watch: DatabaseWatch = field(default_factory=DatabaseWatch)
    worker: WorkerState = field(default_factory=WorkerState)
    journal: Journal = field(init=False)

    def __post_init__(self) -> None:
        self.journal = Journal(self.ctx.pool, self.watch)

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    async def database(self, action: Callable[[], Awaitable[T]]) -> T:
        """`action`, with a lost database reported as `DatabaseUnavailableError` (503). A quick
        round trip first, so an operator waits seconds, not the pool's 30 s, to hear it is away."""
        try:
            await ping(self.ctx.pool, OPERATOR_WAIT_SECONDS)
            found = await action()
        except DatabaseUnavailableError as e:
            self.watch.went(e)
            raise
        except Exception as e:
            if unreachable(e):
                self.watch.went(e)
                raise DatabaseUnavailableError() from e
            raise
        self.watch.answered()
        return found

    async def request_run(self, grant_id: uuid.UUID, *, attempt: int = 1, delay: float = 0.0) -> int:
        """Queue a run of the grant, or answer the one queued or running; returns its id."""

        async def request() -> int:
            async with self.ctx.pool.connection() as connection, connection.transaction():
                run_id, _ = await runs.request(connection, grant_id, attempt=attempt, delay=delay)
            return run_id

        return await self.database(request)

    def keep_unfinished(self, run_id: int) -> Pending:
        """The run lost its database: end it `failed` and queue its grant again, once it answers."""

        async def close(connection: Any) -> None:
            grant_id = await runs.close_unfinished(connection, run_id, UNREACHABLE)
            if grant_id is not None:
                await _requeue(connection, grant_id)

        return self.journal.keep(Pending(f"the end of run {run_id} (failed: database unreachable)", close))

    async def reconcile(self) -> int:
        """End open runs without a live job and queue their grants again; re-queue stalled event
        jobs. Returns how many runs were ended."""
        manager = self.app.job_manager
        ended = 0
        async with self.ctx.pool.connection() as connection:
            found = await runs.orphans(connection, self.settings.sync_stalled_seconds)
        for run_id, _status, job_status in found:
            async with self.ctx.pool.connection() as connection, connection.transaction():
                job = await (
                    await connection.execute("SELECT job_id FROM bluebutton_runs WHERE id = %s", (run_id,))
                ).fetchone()
                grant_id = await runs.close_unfinished(connection, run_id, STOPPED)
                if grant_id is None:
                    continue
                await _requeue(connection, grant_id)
            if job_status == "doing" and job and job[0] is not None:
                with contextlib.suppress(Exception):  # finished meanwhile: nothing to release
                    await manager.finish_job_by_id_async(int(job[0]), Status.FAILED, delete_job=False)
            ended += 1
            logger.warning(
                "run %d had no live job (%s): ended as failed, grant queued again", run_id, job_status
            )
        # A job left `doing` by a stopped worker keeps holding its grant's lock, even when its run
        # was already ended (by the journal, after the database came back): release it.
        for stalled in await manager.get_stalled_jobs(
            task_name=runs.SYNC_TASK, seconds_since_heartbeat=self.settings.sync_stalled_seconds
        ):
            assert stalled.id is not None
            with contextlib.suppress(Exception):  # finished meanwhile
                await manager.finish_job_by_id_async(stalled.id, Status.FAILED, delete_job=False)
                logger.warning("closed sync job %d of a stopped worker", stalled.id)
        await self.events.recover_stalled(manager)
        return ended

    async def sweep(self) -> int:
        """Recover, then queue a run for every due grant without one; returns how many."""
        await self.reconcile()
        due = await grants.due(self.ctx.pool, SWEEP_BATCH)
        for grant_id in due:
            await self.request_run(grant_id)
        if due:
            logger.info("queued runs for %d due grant(s)", len(due))
        return len(due)

    def _options(self, name: str, wait: bool) -> dict[str, Any]:
        settings = self.settings
        return {
            "queues": [runs.QUEUE],
            "name": name,
            "concurrency": settings.sync_concurrency,
            "install_signal_handlers": False,
            "update_heartbeat_interval": settings.sync_heartbeat_seconds,
            "stalled_worker_timeout": settings.sync_stalled_seconds,
            # A run in progress is let finish rather than cut off mid-POST (which is what could
            # store a Bundle twice); it never waits longer than its POST timeout.
            "shutdown_graceful_timeout": settings.sync_lfh_timeout_seconds + 30.0,
            "wait": wait,
            "additional_context": {KEEPING: self, EVENTS: self.events},
        }

    async def run_worker(
        self, *, install_signal_handlers: bool, name: str = "bluebutton-sync", wait: bool = True
    ) -> None:
        """Process jobs until stopped (SIGINT/SIGTERM when standalone, cancellation when embedded);
        `wait=False` processes what is runnable now and returns."""
        if not wait:
            await self.reconcile()
            await self.app.run_worker_async(**self._options(name, wait=False))
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        writer = asyncio.create_task(self.journal.run(), name="sync-journal")
        try:
            await self._supervise(stop, name)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if self.journal.pending:
                logger.error(
                    "stopping with %d write(s) the database never took: %s",
                    len(self.journal.pending),
                    "; ".join(p.what for p in self.journal.pending),
                )

    async def _supervise(self, stop: asyncio.Event, name: str) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await ping(self.ctx.pool)
                self.watch.answered()
                if not await self.journal.settle():
                    raise DatabaseUnavailableError()
                await self.reconcile()
                failures = 0
                worker = asyncio.create_task(self.app.run_worker_async(**self._options(name, wait=True)))
                stopper = asyncio.create_task(stop.wait())
                self.worker.running = True
                try:
                    await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:  # the web process shuts down: stop it gracefully
                    worker.cancel()
                    await asyncio.gather(worker, return_exceptions=True)
                    raise
                finally:
                    self.worker.running = False
                    stopper.cancel()
                if stop.is_set():
                    worker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker
                    return
                error = worker.exception()
                if error is not None:
                    raise error
                # procrastinate stopped its worker by itself: a side task (heartbeat, listener)
                # lost the database
                self.watch.went("the worker's connection was lost")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if misconfigured(e):
                    raise
                if unreachable(e):
                    self.watch.went(e)
                else:
                    logger.exception("the sync worker stopped on an unexpected error; restarting it")
            self.worker.restarts += 1
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff(failures))


async def _requeue(connection: Any, grant_id: uuid.UUID) -> None:
    """Queue the grant again at once if it still syncs (its run did not end by its own fault)."""
    grant = await grants.get_with(connection, grant_id)
    if grant is not None and grant.state in grants.SYNCING:
        await runs.request(connection, grant_id)
