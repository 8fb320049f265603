"""The product running for tests: the app through its lifespan behind ASGITransport, and the
upstream clients, all on virtual clocks (`CMS_TIME`, `CONNECT_TIME`) instead of real sleeps."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from bluebutton.cms.client import CmsClient
from bluebutton.cms.pending import PendingStore
from bluebutton.cms.search_page import Page
from bluebutton.connect.client import ConnectClient
from bluebutton.metrics import Metrics
from bluebutton.outbound.tls import build_ssl_context
from bluebutton.pull.idempotency_store import IdempotencyStore
from bluebutton.settings import Settings
from bluebutton.web.app import create_app
from tests.factories import TOKEN, make_settings
from tests.fakes import SleepRecorder

# What the CMS and connect clients wait with; the `cms_sleeps`/`connect_sleeps` fixtures reset
# them, so the shared app and a test's own clients read the same clock.
CMS_TIME = SleepRecorder()
CONNECT_TIME = SleepRecorder()
CONTEXT = ssl.create_default_context()
EOB = "ExplanationOfBenefit"


def new_cms_client(
    settings: Settings, context: ssl.SSLContext = CONTEXT, metrics: Metrics | None = None
) -> CmsClient:
    return CmsClient.create(
        settings,
        context,
        wrap=metrics.measure("cms") if metrics else None,
        sleep=CMS_TIME.sleep,
        clock=CMS_TIME.monotonic,
        wall_clock=CMS_TIME.time,
    )


def new_connect_client(
    settings: Settings, context: ssl.SSLContext = CONTEXT, metrics: Metrics | None = None
) -> ConnectClient:
    return ConnectClient.create(
        settings, context, wrap=metrics.measure("connect") if metrics else None, sleep=CONNECT_TIME.sleep
    )


@asynccontextmanager
async def running_asgi(
    settings: Settings, *, pending: PendingStore | None = None, idempotency: IdempotencyStore | None = None
) -> AsyncIterator[ASGIApp]:
    """`create_app(settings)` started through its lifespan, with clients on the virtual clocks;
    `pending` and `idempotency` replace the stores it would open."""
    context = build_ssl_context(settings)
    metrics = Metrics()  # the app's, which the clients count their calls in
    async with (
        new_cms_client(settings, context, metrics) as cms,
        new_connect_client(settings, context, metrics) as connect,
    ):
        app = create_app(
            settings, cms=cms, connect=connect, pending=pending, idempotency=idempotency, metrics=metrics
        )
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
            yield manager.app


def client_for(
    app: ASGIApp, base_url: str = "http://test", *, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@asynccontextmanager
async def open_client(
    settings: Settings,
    *,
    pending: PendingStore | None = None,
    idempotency: IdempotencyStore | None = None,
    base_url: str = "http://test",
    raise_app_exceptions: bool = True,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app (create_app → LifespanManager → ASGITransport)."""
    async with (
        running_asgi(settings, pending=pending, idempotency=idempotency) as app,
        client_for(app, base_url, raise_app_exceptions=raise_app_exceptions) as client,
    ):
        yield client


@asynccontextmanager
async def cms_client(**overrides: object) -> AsyncIterator[CmsClient]:
    """A CMS client on its own, with test settings changed by `overrides`."""
    async with new_cms_client(make_settings(**overrides)) as cms:
        yield cms


async def pull_pages(cms: CmsClient, params: list[tuple[str, str]] | None = None) -> list[Page]:
    return [page async for page in cms.iter_pages(EOB, params or [("_count", "50")], TOKEN)]


def ids(pages: list[Page]) -> list[str]:
    return [orjson.loads(entry)["resource"]["id"] for page in pages for entry in page.entries]
