"""Refresh and revoke refuse bodies over 16 KB with 413 before reading them whole (issue 11).

Through the app in process, the request bodies are generators that count what the app pulled;
over a real loopback socket, a body is announced (or started, chunked) and never finished, so only
a server that answers before reading it whole can answer at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest
import respx
import uvicorn

from bluebutton.settings import Settings
from bluebutton.web.body_limit import TOKEN_BODY_BYTES
from tests.factories import REFRESH, REVOKE, make_settings
from tests.running import running_asgi

CHUNK = 4096
TOTAL = 12 * 1024 * 1024  # the issue's 12 MB bodies


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def cms(settings: Settings) -> Iterator[respx.MockRouter]:
    oauth = f"/v{settings.cms_api_version}/o/"
    with respx.mock(base_url=settings.cms_origin, assert_all_called=False) as router:
        router.post(oauth + "revoke_token/", name="revoke").mock(return_value=httpx.Response(200))
        yield router


class CountedBody:
    """A request body of `total` bytes (the start of a JSON object, then padding), counting chunks
    as the app pulls them."""

    def __init__(self, total: int = TOTAL) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            chunk = (b'{"token": "' if sent == 0 else b"") + b"x" * CHUNK
            chunk = chunk[: self.total - sent]
            self.pulled += len(chunk)
            sent += len(chunk)
            yield chunk


def assert_refused(response: httpx.Response, path: str) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    (issue,) = body["issue"]
    assert issue["code"] == "too-costly"
    assert f"{path} takes at most {TOKEN_BODY_BYTES} bytes" in issue["diagnostics"]


@pytest.mark.parametrize("path", [pytest.param(REFRESH, id="refresh"), pytest.param(REVOKE, id="revoke")])
async def test_chunked_body_over_the_cap_is_refused_after_the_cap(
    settings: Settings, cms: respx.MockRouter, path: str
) -> None:
    body = CountedBody()
    async with running_asgi(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(path, content=body, headers={"Content-Type": "application/json"})

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_refused(response, path)
    assert body.pulled <= TOKEN_BODY_BYTES + 2 * CHUNK  # stopped at the cap, not 12 MB later
    assert not cms.calls


@pytest.mark.parametrize("path", [pytest.param(REFRESH, id="refresh"), pytest.param(REVOKE, id="revoke")])
async def test_declared_length_over_the_cap_is_refused_unread(
    settings: Settings, cms: respx.MockRouter, path: str
) -> None:
    body = CountedBody()
    async with running_asgi(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                path,
                content=body,
                headers={"Content-Type": "application/json", "Content-Length": str(TOTAL)},
            )

    assert "transfer-encoding" not in response.request.headers
    assert_refused(response, path)
    assert f"declares Content-Length {TOTAL}" in response.json()["issue"][0]["diagnostics"]
    assert body.pulled == 0
    assert not cms.calls


async def test_the_cap_holds_behind_a_proxy_prefix(settings: Settings, cms: respx.MockRouter) -> None:
    body = CountedBody()
    async with running_asgi(settings) as app:
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            health = await client.get("/api/health")
            response = await client.post("/api" + REVOKE, content=body)

    assert health.status_code == 200  # the app routes under the prefix
    assert_refused(response, REVOKE)
    assert body.pulled <= TOKEN_BODY_BYTES + 2 * CHUNK
    assert not cms.calls


async def test_a_body_at_the_cap_goes_through(settings: Settings, cms: respx.MockRouter) -> None:
    token = "t" * (TOKEN_BODY_BYTES - len(b'{"token":""}'))
    content = orjson.dumps({"token": token})
    assert len(content) == TOKEN_BODY_BYTES
    async with running_asgi(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                REVOKE, content=content, headers={"Content-Type": "application/json"}
            )

    assert response.status_code != 413, response.text
    assert response.status_code in (204, 422)  # past the cap: the route's own rules decide


async def test_a_chunked_body_under_the_cap_reaches_the_route_whole(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for part in (b'{"tok', b'en": "token-', b'to-revoke"}'):
            yield part

    async with running_asgi(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                REVOKE, content=pieces(), headers={"Content-Type": "application/json"}
            )

    assert response.status_code == 204, response.text
    assert cms.routes["revoke"].calls.last.request.content == b"token=token-to-revoke"


async def test_other_routes_are_not_capped(settings: Settings, cms: respx.MockRouter) -> None:
    body = CountedBody(64 * 1024)
    async with running_asgi(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/health", content=body)

    assert response.status_code == 405  # the route's answer, not the cap's


# --- over a real socket ---------------------------------------------------------------------------------


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[int]:
    """The app behind uvicorn on a free loopback port, in this event loop; yields the port."""
    async with running_asgi(settings) as app:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="off", access_log=False, log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn.Server only exposes a flag
                await asyncio.sleep(0.01)
            yield server.servers[0].sockets[0].getsockname()[1]
        finally:
            server.should_exit = True
            await task


async def exchange(port: int, head: bytes, body: bytes) -> bytes:
    """Send a request that never finishes its body; the answer the server gives regardless."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        # A generous bound only so that a server waiting for the rest fails the test, not hangs it.
        return await asyncio.wait_for(reader.read(), timeout=60)
    finally:
        writer.close()


@pytest.mark.parametrize("path", [pytest.param(REFRESH, id="refresh"), pytest.param(REVOKE, id="revoke")])
async def test_socket_announced_12_mb_answered_413_without_the_body(settings: Settings, path: str) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {TOTAL}\r\n\r\n"
    ).encode()
    async with serve(settings) as port:
        answer = await exchange(port, head, b'{"token": "')

    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"connection: close" in rest.lower()
    assert b'"code":"too-costly"' in rest


async def test_socket_chunked_body_answered_413_at_the_cap(settings: Settings) -> None:
    head = (
        f"POST {REVOKE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))  # 24 KB, no last chunk
    async with serve(settings) as port:
        answer = await exchange(port, head, chunks)

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"too-costly"' in answer


@pytest.mark.parametrize("path", [pytest.param(REFRESH, id="refresh"), pytest.param(REVOKE, id="revoke")])
async def test_socket_whole_1_mb_body_answered_413_not_reset(settings: Settings, path: str) -> None:
    """A client that sends its whole 1 MB body before reading gets the 413: the server reads the
    rest before answering (closing on unread data would reset the connection, and the answer with it)."""
    body = b'{"token": "' + b"x" * 1_000_000 + b'"}'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    async with serve(settings) as port:
        answers = [await exchange(port, head, body) for _ in range(3)]

    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
        assert b'"code":"too-costly"' in answer
