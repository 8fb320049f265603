"""Shared pieces of the OAuth tests: settings, the app behind ASGITransport, CMS's answers, wire decoding.

Kept out of conftest.py on purpose; the OAuth test modules import what they need from here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import redis
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from bluebutton.app import create_app
from bluebutton.pending import PendingStore
from bluebutton.settings import Settings

CMS = "https://cms.test"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-value"
CALLBACK_URL = "https://localhost:5200/bluebutton/authorize_callback"
DEFAULT_SCOPES = "openid profile patient/Patient.read patient/Coverage.read patient/ExplanationOfBenefit.read"

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
JSON_ACCEPT = "application/json"

AUTHORIZE = "/bluebutton/authorize"
CALLBACK = "/bluebutton/authorize_callback"
REFRESH = "/bluebutton/refresh"
REVOKE = "/bluebutton/revoke"

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
REDIS_PENDING_PREFIX = "bluebutton:pending:"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tls": False,
        "cms_base_url": CMS,
        "lfh_url": "https://lfh.test",
        "cms_client_id": CLIENT_ID,
        "cms_client_secret": CLIENT_SECRET,
        "validation_workers": 1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def running_asgi(settings: Settings, *, store: PendingStore | None = None) -> AsyncIterator[ASGIApp]:
    """The real app, started through its lifespan; `store` replaces the pending store it would open."""
    app = create_app(settings)
    replaced = (
        mock.patch("bluebutton.app.open_store", return_value=store) if store is not None else nullcontext()
    )
    with replaced:
        async with LifespanManager(app) as manager:
            yield manager.app


def client_for(app: ASGIApp, base_url: str = "http://test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@asynccontextmanager
async def running_app(
    settings: Settings, *, store: PendingStore | None = None, base_url: str = "http://test"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app (create_app → LifespanManager → ASGITransport)."""
    async with running_asgi(settings, store=store) as app, client_for(app, base_url) as client:
        yield client


def token_body(**overrides: Any) -> dict[str, Any]:
    """A CMS token response (bb2-api.md §2.5)."""
    body: dict[str, Any] = {
        "access_token": "cms-access-" + uuid.uuid4().hex,
        "refresh_token": "cms-refresh-" + uuid.uuid4().hex,
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": DEFAULT_SCOPES,
        "patient": "-20140000008325",
        "access_grant_expiration": "2027-07-01T12:00:00Z",
    }
    body.update(overrides)
    return body


def query_of(url: str) -> dict[str, str]:
    params = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in params.values()), params
    return {k: v[0] for k, v in params.items()}


def form_of(request: httpx.Request) -> dict[str, str]:
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    pairs = parse_qsl(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), names
    return dict(pairs)


def basic_credentials(request: httpx.Request) -> tuple[str, str]:
    scheme, _, value = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    return user, password


def s256(verifier: str) -> str:
    """RFC 7636 §4.2, computed independently of the product."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def redis_key(state: str) -> str:
    return REDIS_PENDING_PREFIX + hashlib.sha256(state.encode()).hexdigest()


def redis_unavailable(url: str = REDIS_URL) -> str | None:
    """None when Redis answers PING, else why not (a skip reason).

    A synchronous client on purpose: fixtures stay loop-agnostic whatever loop scope the tests use.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        return f"no Redis answers at {url} ({type(e).__name__}: {e})"
    finally:
        client.close()
    return None


@dataclass
class HeldCms:
    """A respx side effect that holds CMS's answers until released, so requests really overlap."""

    respond: Callable[[httpx.Request], httpx.Response]
    calls: list[httpx.Request] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        await self.released.wait()
        return self.respond(request)


async def until(predicate: Callable[[], bool], polls: int = 5000) -> None:
    """Yield to the loop until `predicate()` holds (bounded; the caller's assertions decide)."""
    for _ in range(polls):
        if predicate():
            return
        await asyncio.sleep(0.001)


def inside(task: asyncio.Task[Any], function: str, module_file: str) -> bool:
    """Whether the suspended task is awaiting somewhere inside `function` of the given product file.

    Walks the chain of awaited coroutines (`Task.get_stack` shows only the outermost frame of a
    suspended coroutine).
    """
    awaited: Any = task.get_coro()
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is not None and code.co_name == function and code.co_filename.endswith(module_file):
            return True
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return False


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    text: str = ""


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, Element] = {}
        self.links: list[str] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        if tag == "a" and element.attrs.get("href"):
            self.links.append(element.attrs["href"] or "")
        element_id = element.attrs.get("id")
        if element_id:
            assert element_id not in self.by_id, f"duplicate id {element_id}"
            self.by_id[element_id] = element
        if tag not in ("meta", "br", "input", "link", "img"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data


@dataclass
class Page:
    by_id: dict[str, Element]
    links: list[str]


def parse_page(html: str) -> Page:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return Page(parser.by_id, parser.links)
