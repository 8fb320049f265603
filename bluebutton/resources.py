"""The composition root: everything a process opens from its settings, in one place.

`open_resources(settings)` opens, in one `AsyncExitStack` (a start-up that fails halfway closes
what it had opened, in reverse): the TLS trust, the `Metrics`, the CMS and connect clients with
the metrics' counting transport built in, the validator, the OAuth client, one Redis client shared
by the pending-authorization and Idempotency-Key stores (or memory stores), and, when grant keeping
is on, the database pool and the token cipher. The web lifespan, the standalone worker and the
benchmark all call it; the sync code reads it through `sync.context.SyncContext`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.cms.pending import MemoryPendingStore, PendingStore, RedisPendingStore
from bluebutton.connect.client import ConnectClient
from bluebutton.fhir.validator import Validator
from bluebutton.metrics import Metrics
from bluebutton.outbound.tls import build_ssl_context
from bluebutton.pull.idempotency_store import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from bluebutton.settings import Settings
from bluebutton.sync.crypto import TokenCipher
from bluebutton.sync.database import open_pool, release_embedded, resolve_conninfo


@dataclass(frozen=True)
class Overrides:
    """Resources a caller opened itself (tests: clients on a virtual clock, a store to inspect, a
    validator never started). The root uses them as they are and leaves them to their caller to
    close; a client passed in counts in `metrics` only if it was built with `metrics.measure`."""

    metrics: Metrics | None = None
    cms: CmsClient | None = None
    connect: ConnectClient | None = None
    validator: Validator | None = None
    pending: PendingStore | None = None
    idempotency: IdempotencyStore | None = None


@dataclass(frozen=True)
class Database:
    """Grant keeping's own resources: the pool (shared with procrastinate) and the token cipher."""

    pool: AsyncConnectionPool
    cipher: TokenCipher


@dataclass(frozen=True)
class Resources:
    """What one process has open; `database` is None when grant keeping is off."""

    settings: Settings
    tls: ssl.SSLContext
    metrics: Metrics
    cms: CmsClient
    connect: ConnectClient
    validator: Validator
    oauth: OAuthClient
    pending: PendingStore
    idempotency: IdempotencyStore
    database: Database | None

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._database().pool

    @property
    def cipher(self) -> TokenCipher:
        return self._database().cipher

    def _database(self) -> Database:
        # Only grant keeping reads these, and it is only opened when the settings turn it on.
        if self.database is None:
            raise RuntimeError("grant keeping is off in this process: no database is open")
        return self.database


@asynccontextmanager
async def open_resources(settings: Settings, overrides: Overrides | None = None) -> AsyncIterator[Resources]:
    """Open every resource `settings` call for, except those in `overrides`; close them in reverse."""
    given = overrides or Overrides()
    async with AsyncExitStack() as stack:
        tls = build_ssl_context(settings)
        metrics = given.metrics or Metrics()
        cms = given.cms
        if cms is None:
            cms = await stack.enter_async_context(
                CmsClient.create(settings, tls, wrap=metrics.measure("cms"))
            )
        connect = given.connect
        if connect is None:
            connect = await stack.enter_async_context(
                ConnectClient.create(settings, tls, wrap=metrics.measure("connect"))
            )
        pending, idempotency = await _open_stores(settings, given, stack)
        validator = given.validator
        if validator is None:
            validator = Validator(settings.validation_workers, fast=settings.fast_validation)
            await stack.enter_async_context(validator)
        database = await _open_database(settings, stack) if settings.sync_enabled else None
        yield Resources(
            settings=settings,
            tls=tls,
            metrics=metrics,
            cms=cms,
            connect=connect,
            validator=validator,
            oauth=OAuthClient(settings, cms.http),  # borrows the CMS client's connections
            pending=pending,
            idempotency=idempotency,
            database=database,
        )


async def _open_stores(
    settings: Settings, given: Overrides, stack: AsyncExitStack
) -> tuple[PendingStore, IdempotencyStore]:
    """`BLUEBUTTON_STATE_STORE`: `memory`, or a Redis URL whose one client both stores share."""
    pending, idempotency = given.pending, given.idempotency
    if pending is not None and idempotency is not None:
        return pending, idempotency
    if settings.state_store == "memory":
        return (
            pending or MemoryPendingStore(max_pending=settings.state_max_pending),
            idempotency or MemoryIdempotencyStore(),
        )
    client = aioredis.from_url(settings.state_store, socket_timeout=5, socket_connect_timeout=5)
    stack.push_async_callback(client.aclose)
    return (
        pending or RedisPendingStore(client, max_pending=settings.state_max_pending),
        idempotency or RedisIdempotencyStore(client),
    )


async def _open_database(settings: Settings, stack: AsyncExitStack) -> Database:
    assert settings.token_keys is not None  # sync_enabled says so
    cipher = TokenCipher.from_setting(settings.token_keys.get_secret_value())
    # Registered first, so it runs last: the embedded server outlives the pool that uses it.
    stack.push_async_callback(release_embedded, settings)
    pool = await open_pool(await resolve_conninfo(settings), settings.database_pool_size)
    stack.push_async_callback(pool.close)
    return Database(pool, cipher)
