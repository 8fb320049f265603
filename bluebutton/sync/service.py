"""What a process opens for grant keeping, and the operations the API and the callback call.

Every process opens it on the resources of the composition root (`bluebutton.resources`): the web
lifespan (with `BLUEBUTTON_SYNC_WORKER=embedded`, a worker inside), `python -m bluebutton worker`
and the CLI through `open_standalone`, the benchmark. Any number of them share one database.
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
from bluebutton.outbound.logs import redact_http_logs
from bluebutton.resources import Overrides, open_resources
from bluebutton.settings import Settings
from bluebutton.sync import grants, listing
from bluebutton.sync.context import SyncContext
from bluebutton.sync.crypto import TokenKeyError
from bluebutton.sync.errors import GrantNotFoundError, GrantNotSyncingError
from bluebutton.sync.grants import SYNCING, Grant
from bluebutton.sync.jobs import SyncJobs
from bluebutton.sync.migrations import migrate, migration_files

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
    jobs: SyncJobs
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
        settings = self.context.settings
        grant_id = await grants.enrol(
            self.pool, self.context.cipher, tokens, settings.cms_api_version, tokens.patient
        )
        run_id = await self.jobs.request_run(grant_id)
        logger.info("enrolled grant %s; run %d queued", grant_id, run_id)
        return grant_id, run_id

    async def grant(self, grant_id: uuid.UUID) -> Grant:
        found = await grants.get(self.pool, grant_id)
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
        await grants.end(self.pool, grant_id, "disconnected")
        logger.info("disconnected grant %s", grant_id)

    async def grant_json(self, grant_id: uuid.UUID) -> dict[str, Any]:
        return (await listing.describe(self.pool, [await self.grant(grant_id)]))[0]


async def _check_schema(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as connection:
        exists = await (
            await connection.execute("SELECT to_regclass('bluebutton_schema_migrations') IS NOT NULL")
        ).fetchone()
        applied: set[str] = set()
        if exists and exists[0]:
            rows = await (
                await connection.execute("SELECT version FROM bluebutton_schema_migrations")
            ).fetchall()
            applied = {r[0] for r in rows}
    missing = [v for v, _ in migration_files() if v not in applied]
    if missing:
        raise RuntimeError(
            f"the database lacks schema migration(s) {', '.join(missing)}: run python -m bluebutton "
            "migrate (or leave BLUEBUTTON_DATABASE_MIGRATE on)"
        )


@asynccontextmanager
async def open_sync(context: SyncContext, *, worker: bool) -> AsyncIterator[SyncService]:
    """Procrastinate on the root's pool, migrations (or a check of them), the event delivery and,
    optionally, a worker task; closed in reverse. The pool itself stays the root's to close."""
    settings = context.settings
    jobs = SyncJobs(settings)
    events = EventDelivery(settings, jobs.app)  # its tasks, on the same app and worker
    events.pool = context.pool
    task: asyncio.Task[None] | None = None
    try:
        await jobs.app.open_async(context.pool)
        if settings.database_migrate:
            await migrate(context.pool, jobs.app)
        else:
            await _check_schema(context.pool)
        jobs.context = context
        if worker:
            task = asyncio.create_task(jobs.run_worker(install_signal_handlers=False), name="sync-worker")
        yield SyncService(context, jobs, events)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await jobs.app.close_async()
        await events.aclose()


@asynccontextmanager
async def open_standalone(
    settings: Settings, *, worker: bool, overrides: Overrides | None = None
) -> AsyncIterator[SyncService]:
    """Grant keeping with the process's own resources, for the CLI and standalone workers."""
    if not settings.sync_enabled:
        raise sync_off()
    redact_http_logs()
    async with (
        open_resources(settings, overrides) as resources,
        open_sync(resources, worker=worker) as service,
    ):
        yield service
