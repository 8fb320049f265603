"""CMS's per-token throttle and its `X-RateLimit-*` headers, on the FHIR data views of v2 and v3.

WS `apps/dot_ext/throttling.py` (bb2-api.md §4, bb2-v3.md §4): a sliding window per access token;
`X-RateLimit-Limit` is the requests allowed per window, `X-RateLimit-Remaining` the limit minus the
requests in the window including this one, `X-RateLimit-Reset` the float seconds until the oldest
of them leaves the window; past the limit, 429 with DRF's text and `Retry-After`. CMS's default
rate is 100000/s; `PUT /_sandbox/rate_limit {"limit": 5, "window_seconds": 10}` makes it bite.
Time is the emulated clock's, so tests move past a window without sleeping.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from typing import Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_DATA_PATH: Final = re.compile(r"^/v[23]/fhir/(Patient|Coverage|ExplanationOfBenefit)(/[^/]*)?/?$")


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(100_000, ge=1)
    window_seconds: float = Field(1.0, gt=0)


class Throttle:
    """Request times per token within the window (one event loop: no lock)."""

    def __init__(self, clock: Callable[[], float], rate: RateLimit | None = None) -> None:
        self.clock = clock
        self.rate = rate or RateLimit()
        self._seen: dict[str, deque[float]] = {}

    def reset(self) -> None:
        self.rate = RateLimit()
        self._seen.clear()

    def check(self, token: str) -> tuple[bool, dict[str, str]]:
        """(allowed, headers) for one request of `token`; an allowed request is counted."""
        now, rate = self.clock(), self.rate
        seen = self._seen.setdefault(token, deque())
        while seen and seen[0] <= now - rate.window_seconds:
            seen.popleft()
        allowed = len(seen) < rate.limit
        if allowed:
            seen.append(now)
        reset = seen[0] + rate.window_seconds - now if seen else rate.window_seconds
        headers = {
            "X-RateLimit-Limit": str(rate.limit),
            "X-RateLimit-Remaining": str(max(0, rate.limit - len(seen))),
            "X-RateLimit-Reset": f"{reset:.3f}",
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil(reset)))
        if len(self._seen) > 10_000:  # forget idle tokens rather than grow
            for key in [k for k, v in self._seen.items() if not v]:
                del self._seen[key]
        return allowed, headers

    def routes(self) -> list[BaseRoute]:
        return [Route("/_sandbox/rate_limit", self.endpoint, methods=["GET", "PUT"])]

    async def endpoint(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.rate = RateLimit.model_validate(orjson.loads(await request.body() or b"{}"))
            except (ValidationError, orjson.JSONDecodeError) as e:
                return JSONResponse({"detail": str(e)}, status_code=400)
            self._seen.clear()
        return JSONResponse(self.rate.model_dump())


class ThrottleMiddleware:
    """Pure ASGI: counts FHIR data requests per bearer token and adds the headers to the answer."""

    def __init__(self, app: ASGIApp, throttle: Throttle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _DATA_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = authorization.partition(" ")[2].strip()
        if not token:
            await self.app(scope, receive, send)
            return
        allowed, headers = self.throttle.check(token)
        encoded = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        if not allowed:
            seconds = headers["Retry-After"]
            body = orjson.dumps(
                {"detail": f"Request was throttled. Expected available in {seconds} seconds."}
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), *encoded],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *encoded]}
            await send(message)

        await self.app(scope, receive, with_headers)
