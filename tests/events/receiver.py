"""A real webhook receiver on a loopback socket (uvicorn, a bare ASGI app): it answers from a
script of statuses and keeps every request it got."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.factories import CERTS


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)  # answered in turn; then 200
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(Received({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"receiver-private-answer"})


@asynccontextmanager
async def running(receiver: Receiver, *, tls: bool = False) -> AsyncIterator[Receiver]:
    """Serve on 127.0.0.1 (with `tls`, HTTPS with the development certificate of local-certs/)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    receiver.url = f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}/hooks"
    certs: dict[str, Any] = {}
    if tls:
        certs = {"ssl_certfile": str(CERTS / "server.pem"), "ssl_keyfile": str(CERTS / "server.key")}
    server = uvicorn.Server(uvicorn.Config(receiver, log_level="warning", lifespan="off", **certs))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn.Server only exposes a flag
            await asyncio.sleep(0.01)
        yield receiver
    finally:
        server.should_exit = True
        await task
        sock.close()
