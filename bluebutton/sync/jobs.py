"""procrastinate as documented: tasks at module level on blueprints, one App per process.

- `run_sync(run_id)`: its run was written first (`runs.request`, lock = the grant: never two
  runs of one grant at once, on any machine, since refresh tokens are single-use); the task reads
  what it needs from the worker's context (`additional_context`, filled by
  `Keeping.run_worker`), never from process globals.
- `sweep_due_grants` runs on `BLUEBUTTON_SYNC_SWEEP_CRON`, deferred once per period however many
  workers run: it recovers what stopped workers left and queues a run for every due grant.

`app` is the process's App; the events blueprint (`bluebutton.events.delivery`) is on it too,
so one worker runs syncs and deliveries. It is opened on the process's pool (`open_async(pool)`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import procrastinate
from procrastinate import JobContext
from psycopg_pool import AsyncConnectionPool

from bluebutton.events import delivery
from bluebutton.settings import Settings
from bluebutton.sync import runs
from bluebutton.sync.keeping import KEEPING, Keeping
from bluebutton.sync.runner import run_grant

SWEEP_TASK = "sweep_due_grants"
SWEEP_PERIODIC_ID = "due-grants"

blueprint = procrastinate.Blueprint()


def keeping_of(context: JobContext) -> Keeping:
    found = context.additional_context.get(KEEPING)
    if not isinstance(found, Keeping):
        raise RuntimeError("this worker was started without grant keeping in its context")
    return found


@blueprint.task(name="run_sync", queue=runs.QUEUE, pass_context=True)
async def run_sync(context: JobContext, run_id: int) -> str:
    assert context.job.id is not None
    return await run_grant(keeping_of(context), run_id, context.job.id)


@blueprint.task(name=SWEEP_TASK, queue=runs.QUEUE, pass_context=True, queueing_lock=SWEEP_TASK)
async def sweep_due_grants(context: JobContext, timestamp: int) -> int:
    return await keeping_of(context).sweep()


app = procrastinate.App(connector=procrastinate.PsycopgConnector())
app.add_tasks_from(blueprint, namespace="sync")
app.add_tasks_from(delivery.blueprint, namespace="events")
assert run_sync.name == runs.SYNC_TASK


@asynccontextmanager
async def opened(settings: Settings, pool: AsyncConnectionPool) -> AsyncIterator[procrastinate.App]:
    """The process's App on `pool`, through a connector of its own for as long as it is open
    (procrastinate's `replace_connector`: a test process opens several in turn)."""
    with schedule(settings).replace_connector(procrastinate.PsycopgConnector()) as opened_app:
        await opened_app.open_async(pool)
        try:
            yield opened_app
        finally:
            await opened_app.close_async()


def schedule(settings: Settings) -> procrastinate.App:
    """The process's App with the sweep on the configured cron (set once per process; a later
    call with another cron replaces it, as tests with their own settings do)."""
    registry = app.periodic_registry
    key = (sweep_due_grants.name, SWEEP_PERIODIC_ID)
    current = registry.periodic_tasks.get(key)
    if current is None or current.cron != settings.sync_sweep_cron:
        registry.periodic_tasks.pop(key, None)
        registry.register_task(
            task=sweep_due_grants,
            cron=settings.sync_sweep_cron,
            periodic_id=SWEEP_PERIODIC_ID,
            configure_kwargs={},
        )
    return app
