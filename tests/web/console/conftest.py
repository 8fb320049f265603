"""The console through the real app: `create_app` with the console's clock and pause replaced
(`dependency_overrides`), its lifespan, ASGITransport over https (the session cookie is Secure, and
httpx only sends Secure cookies over https), a real PostgreSQL and the in-process emulated CMS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx
from asgi_lifespan import LifespanManager

from bluebutton.metrics import Metrics
from bluebutton.outbound.tls import build_ssl_context
from bluebutton.settings import Settings
from bluebutton.web.app import create_app
from bluebutton.web.console import routes as console_routes
from tests.e2e.test_browser import tab  # noqa: F401 - fixture (its browser: tests/web/console/test_browser.py)
from tests.running import client_for, new_cms_client, new_connect_client
from tests.sync.conftest import database_server, database_url, token_keys  # noqa: F401 - fixtures


@dataclass
class ConsoleTime:
    """The console's wall clock and its sign-in pause, both virtual."""

    now: float = field(default_factory=time.time)  # real time to start with: grants end in real time
    pauses: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


@asynccontextmanager
async def console_client(settings: Settings, clock: ConsoleTime) -> AsyncIterator[httpx.AsyncClient]:
    context = build_ssl_context(settings)
    metrics = Metrics()
    async with (
        new_cms_client(settings, context, metrics) as cms,
        new_connect_client(settings, context, metrics) as connect,
    ):
        app = create_app(settings, cms=cms, connect=connect, metrics=metrics)
        app.dependency_overrides[console_routes.get_clock] = lambda: clock.clock
        app.dependency_overrides[console_routes.get_pause] = lambda: clock.pause
        async with (
            LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
            client_for(manager.app, "https://test") as client,
        ):
            yield client


class Page(HTMLParser):
    """What the tests read from a console page: element ids, forms (action → fields), texts by id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.forms: dict[str, dict[str, str]] = {}
        self.styles: list[dict[str, str | None]] = []
        self._form: dict[str, str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "form":
            self._form = self.forms.setdefault(str(values.get("action")), {})
        elif tag == "input" and self._form is not None and values.get("name"):
            self._form[str(values["name"])] = str(values.get("value") or "")
        elif tag == "style":
            self.styles.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
