"""What a process opens for grant keeping, and the operations the API and the callback call.

The web process opens it in its lifespan with the clients it already has (and, with
`BLUEBUTTON_SYNC_WORKER=embedded`, runs a worker inside); `python -m bluebutton worker` opens the
same with clients of its own. Any number of them share one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient, TokenSet
from bluebutton.connect.client import ConnectClient
from bluebutton.errors import NotConfiguredError
from bluebutton.events.delivery import EventDelivery
from bluebutton.fhir.validator import Validator
from bluebutton.outbound import build_ssl_context, redact_http_logs
from bluebutton.settings import Settings
from bluebutton.sync import grants, ledger, runs
from bluebutton.sync.context import SyncContext
from bluebutton.sync.crypto import TokenCipher, TokenKeyError
from bluebutton.sync.database import open_pool, release_embedded, resolve_conninfo
from bluebutton.sync.errors import GrantNotFoundError, GrantNotSyncingError
from bluebutton.sync.grants import SYNCING, Grant, GrantState
from bluebutton.sync.jobs import SyncJobs
from bluebutton.sync.migrations import migrate, migration_files

logger = logging.getLogger(__name__)

SYNC_SETTINGS = "BLUEBUTTON_DATABASE_URL (postgresql://... or embedded) and BLUEBUTTON_TOKEN_KEYS"

# What a v3 consent can hide from the app without any signal in the token, scopes or userinfo
# (bb2-v3.md §5): a claim missing from a later result is not a deletion.
WITHHELD_ON_V3 = [
    "substance-use (42 CFR Part 2) claims: the v3 consent's box is unticked by default",
    "every claim but Part D (DDPS) when CMS made the app Part-D-only",
]


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
        grant_id = await grants.enrol(
            self.pool, self.context.cipher, tokens, tokens.api_version, tokens.patient
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

    async def describe(self, grant: Grant, last_run: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": str(grant.id),
            "patient": grant.patient,
            "api_version": grant.api_version,
            "may_be_withheld": WITHHELD_ON_V3 if grant.api_version == 3 else [],
            "state": grant.state,
            "scopes": grant.scopes,
            "access_grant_expiration": _instant(grant.access_grant_expiration),
            "created_at": _instant(grant.created_at),
            "next_sync_at": _instant(grant.next_sync_at) if grant.state in SYNCING else None,
            "last_run": runs.as_json(last_run) if last_run else None,
            "quarantined": await ledger.quarantined(self.pool, grant.id),
        }

    async def grant_json(self, grant_id: uuid.UUID) -> dict[str, Any]:
        grant = await self.grant(grant_id)
        last = (await runs.last_finished(self.pool, [grant_id])).get(grant_id)
        return await self.describe(grant, last)

    async def grants_json(self, state: GrantState | None, limit: int) -> list[dict[str, Any]]:
        found = await grants.list_grants(self.pool, state, limit)
        last = await runs.last_finished(self.pool, [g.id for g in found])
        return [await self.describe(g, last.get(g.id)) for g in found]


def _instant(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


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
async def open_sync(
    settings: Settings,
    cms: CmsClient,
    oauth: OAuthClient,
    connect: ConnectClient,
    validator: Validator,
    *,
    worker: bool,
) -> AsyncIterator[SyncService]:
    """Pool, migrations, procrastinate and (optionally) a worker task, closed in reverse."""
    assert settings.token_keys is not None
    cipher = TokenCipher.from_setting(settings.token_keys.get_secret_value())
    pool = await open_pool(await resolve_conninfo(settings), settings.database_pool_size)
    jobs = SyncJobs(settings)
    events = EventDelivery(settings, jobs.app)  # its tasks, on the same app and worker
    events.pool = pool
    task: asyncio.Task[None] | None = None
    try:
        await jobs.app.open_async(pool)
        if settings.database_migrate:
            await migrate(pool, jobs.app)
        else:
            await _check_schema(pool)
        jobs.context = SyncContext(settings, pool, cipher, cms, oauth, connect, validator)
        if worker:
            task = asyncio.create_task(jobs.run_worker(install_signal_handlers=False), name="sync-worker")
        yield SyncService(jobs.context, jobs, events)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await jobs.app.close_async()
        await events.aclose()
        await pool.close()
        await release_embedded(settings)


@asynccontextmanager
async def open_standalone(settings: Settings, *, worker: bool) -> AsyncIterator[SyncService]:
    """Grant keeping with its own upstream clients, for the CLI and standalone workers."""
    if not settings.sync_enabled:
        raise sync_off()
    redact_http_logs()
    context = build_ssl_context(settings)
    async with contextlib.AsyncExitStack() as stack:
        cms = await stack.enter_async_context(CmsClient.create(settings, context))
        connect = await stack.enter_async_context(ConnectClient.create(settings, context))
        validator = await stack.enter_async_context(
            Validator(settings.validation_workers, fast=settings.fast_validation)
        )
        oauth = OAuthClient(settings, cms.http)
        service = await stack.enter_async_context(
            open_sync(settings, cms, oauth, connect, validator, worker=worker)
        )
        yield service
