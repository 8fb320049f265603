"""What a process opens for grant keeping, and the operations the API and the callback call.

Every process opens it on the resources of the composition root (`bluebutton.resources`): the web
lifespan (with `BLUEBUTTON_SYNC_WORKER=embedded`, a worker inside), `python -m bluebutton worker`
and the CLI through `bluebutton.commands.open_standalone`, the benchmark. Any number of them
share one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from bluebutton.cms.oauth import TokenSet
from bluebutton.errors import NotConfiguredError
from bluebutton.events.delivery import EventDelivery
from bluebutton.sync import grants, listing, runs
from bluebutton.sync.context import SyncContext
from bluebutton.sync.crypto import TokenKeyError
from bluebutton.sync.database import unreachable
from bluebutton.sync.errors import GrantNotFoundError, GrantNotSyncingError
from bluebutton.sync.grants import SYNCING, Grant
from bluebutton.sync.jobs import opened
from bluebutton.sync.keeping import Keeping
from bluebutton.sync.migrations import check, migrate

logger = logging.getLogger(__name__)

SYNC_SETTINGS = "BLUEBUTTON_DATABASE_URL (postgresql://... or embedded) and BLUEBUTTON_TOKEN_KEYS"


def sync_off() -> NotConfiguredError:
    return NotConfiguredError(
        f"Grant keeping is off: set {SYNC_SETTINGS} (python -m bluebutton keygen makes a key), and "
        "BLUEBUTTON_ADMIN_API_KEY for the operator API."
    )


@dataclass
class SyncService:
    context: SyncContext
    jobs: Keeping
    events: EventDelivery | None = None

    @property
    def pool(self) -> AsyncConnectionPool:
        return self.context.pool

    async def enrol(self, tokens: TokenSet) -> tuple[uuid.UUID, int]:
        """Store the grant from a callback's token set and queue its first run at once."""
        if not tokens.patient:
            raise GrantNotSyncingError(
                "Blue Button's token response names no patient, so the grant cannot be kept"
            )
        patient = tokens.patient
        grant_id = await self.jobs.database(
            lambda: grants.enrol(self.pool, self.context.cipher, tokens, tokens.api_version, patient)
        )
        run_id = await self.jobs.request_run(grant_id)
        logger.info("enrolled grant %s; run %d queued", grant_id, run_id)
        return grant_id, run_id

    async def grant(self, grant_id: uuid.UUID) -> Grant:
        found = await self.jobs.database(lambda: grants.get(self.pool, grant_id))
        if found is None:
            raise GrantNotFoundError(f"No grant {grant_id}. List them with GET /bluebutton/grants.")
        return found

    async def sync_now(self, grant_id: uuid.UUID) -> int:
        grant = await self.grant(grant_id)
        if grant.state not in SYNCING:
            raise GrantNotSyncingError(
                f"Grant {grant_id} is {grant.state}: only active or failing grants sync. The "
                "beneficiary must authorize again (GET /bluebutton/authorize?sync=true)."
            )
        return await self.jobs.request_run(grant_id)

    async def disconnect(self, grant_id: uuid.UUID) -> None:
        """Revoke the refresh token at CMS (RFC 7009), erase the tokens, state `disconnected`."""
        grant = await self.grant(grant_id)
        for blob in (grant.refresh_token_ct, grant.access_token_ct):
            if blob is None:
                continue
            try:
                token = self.context.cipher.decrypt(blob, grant_id)
            except TokenKeyError:
                continue  # unusable anyway; erased below
            await self.context.oauth.revoke(token)
        await self.jobs.database(lambda: grants.end(self.pool, grant_id, "disconnected"))
        logger.info("disconnected grant %s", grant_id)

    async def grant_json(self, grant_id: uuid.UUID) -> dict[str, Any]:
        grant = await self.grant(grant_id)

        async def read() -> dict[str, Any]:
            return (await listing.describe(self.pool, [grant]))[0]

        return await self.jobs.database(read)

    async def run_json(self, run_id: int) -> dict[str, Any] | None:
        row = await self.jobs.database(lambda: runs.get(self.pool, run_id))
        return runs.as_json(row) if row else None

    async def health(self) -> dict[str, Any]:
        """Grant keeping's state for `/health`: database reachable, workers with a fresh
        heartbeat (any process), this process's worker, age of the oldest run due and waiting."""
        keeping = self.jobs
        state: dict[str, Any] = {
            "database": "reachable",
            "workers": None,
            "embedded_worker": None,
            "oldest_queued_run_seconds": None,
            "pending_writes": len(keeping.journal.pending),
        }
        if self.context.settings.sync_worker == "embedded":
            state["embedded_worker"] = "running" if keeping.worker.running else "restarting"
        try:
            async with self.pool.connection(timeout=2.0) as connection:
                row = await (
                    await connection.execute(
                        "SELECT count(*) FROM procrastinate_workers "
                        "WHERE last_heartbeat > now() - make_interval(secs => %s)",
                        (self.context.settings.sync_stalled_seconds,),
                    )
                ).fetchone()
                state["workers"] = int(row[0]) if row else 0
                state["oldest_queued_run_seconds"] = await runs.oldest_queued_seconds(connection)
            keeping.watch.answered()
        except Exception as e:
            if not unreachable(e):
                raise
            keeping.watch.went(e)
            state["database"] = "unreachable"
        down = keeping.watch.down_for()
        if down is not None:
            state["database_unreachable_seconds"] = round(down, 1)
        state["progressing"] = state["database"] == "reachable" and bool(state["workers"])
        return state


@asynccontextmanager
async def open_sync(context: SyncContext, *, worker: bool) -> AsyncIterator[SyncService]:
    """procrastinate on the root's pool, migrations (or a check of them), the event delivery and,
    optionally, a supervised worker; closed in reverse. The pool itself stays the root's to close."""
    settings = context.settings
    async with contextlib.AsyncExitStack() as stack:
        events = EventDelivery(settings, context.pool)
        stack.push_async_callback(events.aclose)
        app = await stack.enter_async_context(opened(settings, context.pool))
        if settings.database_migrate:
            await migrate(context.pool)
        else:
            await check(context.pool)
        keeping = Keeping(context, app, events)
        if worker:
            task = asyncio.create_task(_embedded(keeping), name="sync-worker")
            stack.push_async_callback(_cancel, task)
        yield SyncService(context, keeping, events)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _embedded(keeping: Keeping) -> None:
    """The web process's worker: restarted whenever it stops, until the process shuts down."""
    while True:
        try:
            await keeping.run_worker(install_signal_handlers=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the embedded sync worker stopped; restarting it")
        keeping.worker.restarts += 1
        await asyncio.sleep(1.0)
