"""Fault injection for the emulated Blue Button API: latency, throttling, 5xx, dropped connections.

`Faults` is the switchboard (set from config or `--faults` JSON at start, replaced at run time by
`PUT /_sandbox/faults`); `FaultMiddleware` applies it in front of the FHIR routes. Counters count
down as they fire; `foreign_next_link` and `fail_page` stay until changed.

Which requests: latency is added to every `/v2|v3/fhir/...` response (metadata included); the other
faults only hit data requests (`/v2|v3/fhir/Patient|Coverage|ExplanationOfBenefit...`), before token
checks, so a counter of N hits exactly the next N data requests. Precedence when several are armed:
drop_connections, rate_limit, server_errors, fail_page.

Bodies are what a client would meet on CMS (bb2-api.md §4): DRF's throttle text with `Retry-After`;
502 `{"detail":"A failure occurred contacting the upstream server"}`; 500 Django's
`{"error":"Server Error (500)"}`; 503 the load balancer's HTML page.

A dropped connection closes the socket without a status line. Under uvicorn the middleware aborts
the transport of the raw ASGI `send` the app stored in the scope (`RAW_SEND_KEY`); the client then
sees `httpx.RemoteProtocolError` ("Server disconnected without sending a response"). Without such a
transport (in-process `httpx.ASGITransport`) it raises `ConnectionDropped` instead.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

RAW_SEND_KEY: Final = "bluebutton.sandbox.raw_send"
FHIR_MEDIA_TYPE: Final = "application/fhir+json"
_DATA_PATH: Final = re.compile(r"^/v[23]/fhir/(Patient|Coverage|ExplanationOfBenefit)(/[^/]*)?/?$")
_SEARCH_PATH: Final = re.compile(r"^/v[23]/fhir/(Patient|Coverage|ExplanationOfBenefit)/?$")
_LB_503: Final = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
    b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class Faults(BaseModel):
    """What to break next. All zero/false means a healthy server."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: int = Field(0, ge=0, description="added to every FHIR response")
    rate_limit: int = Field(0, ge=0, description="answer the next N data requests with 429")
    retry_after: int = Field(1, ge=0, description="seconds in Retry-After and the 429 text")
    server_errors: int = Field(0, ge=0, description="answer the next N data requests with 5xx")
    server_error_status: Literal[500, 502, 503] = 502
    drop_connections: int = Field(0, ge=0, description="close the next N without a response")
    foreign_next_link: bool = Field(False, description="`next` links point at evil.example.com")
    fail_page: int | None = Field(None, ge=0, description="500 for searches at this startIndex/_offset")


class FaultState:
    """The live `Faults`, shared by the middleware and the admin endpoints."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults


class ConnectionDropped(ConnectionError):
    """Raised in-process where no socket can be closed (the emulator meant to drop it)."""


def _response_messages(
    status: int, body: bytes, media_type: str, extra: list[tuple[bytes, bytes]] | None = None
) -> list[dict[str, Any]]:
    headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


def throttled(retry_after: int) -> list[dict[str, Any]]:
    unit = "second" if retry_after == 1 else "seconds"
    body = orjson.dumps({"detail": f"Request was throttled. Expected available in {retry_after} {unit}."})
    return _response_messages(429, body, FHIR_MEDIA_TYPE, [(b"retry-after", str(retry_after).encode())])


def server_error(status: int) -> list[dict[str, Any]]:
    if status == 503:
        return _response_messages(503, _LB_503, "text/html")
    if status == 500:
        return _response_messages(500, b'{"error":"Server Error (500)"}', "application/json")
    body = b'{"detail":"A failure occurred contacting the upstream server"}'
    return _response_messages(502, body, FHIR_MEDIA_TYPE)


async def drop_connection(scope: Scope) -> None:
    """Abort the client's connection before any byte of a response is written."""
    cycle = getattr(scope.get(RAW_SEND_KEY), "__self__", None)  # uvicorn's RequestResponseCycle
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise ConnectionDropped("fault injection: connection dropped")
    transport.abort()
    # Wait for uvicorn to notice (connection_lost), so it does not write a 500 of its own.
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.005)


class FaultMiddleware:
    """Pure ASGI middleware in front of the FHIR routes (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        state: FaultState,
        base_latency_ms: int = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self.state = state
        self.base_latency_ms = base_latency_ms
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(("/v2/fhir/", "/v3/fhir/")):
            await self.app(scope, receive, send)
            return
        faults = self.state.faults
        latency = self.base_latency_ms + faults.latency_ms
        if latency:
            await self.sleep(latency / 1000)
        messages = self._fault_for(scope, path, faults) if _DATA_PATH.match(path) else None
        if messages == "drop":
            await drop_connection(scope)
            return
        if messages is None:
            await self.app(scope, receive, send)
            return
        for message in messages:
            await send(message)

    @staticmethod
    def _fault_for(scope: Scope, path: str, faults: Faults) -> list[dict[str, Any]] | Literal["drop"] | None:
        if faults.drop_connections:
            faults.drop_connections -= 1
            return "drop"
        if faults.rate_limit:
            faults.rate_limit -= 1
            return throttled(faults.retry_after)
        if faults.server_errors:
            faults.server_errors -= 1
            return server_error(faults.server_error_status)
        if faults.fail_page is not None and _SEARCH_PATH.match(path):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            start = query.get("_offset", query.get("startIndex", ["0"]))[-1]
            if start == str(faults.fail_page):
                return server_error(500)
        return None
