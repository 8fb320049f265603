"""Request counts of the CMS emulator, so a benchmark can say how many calls a sync round cost.

`RequestCountMiddleware` counts every request to a FHIR data type (`Patient`, `Coverage`,
`ExplanationOfBenefit`, searches and reads alike) and to the token endpoint, before any fault
answers it: a throttled or failed request is a request CMS saw.

    GET    /_sandbox/requests   {"Patient": n, "Coverage": n, "ExplanationOfBenefit": n, "token": n}
    DELETE /_sandbox/requests   the counts back to zero (answers the counts it had)
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

KINDS: Final = ("Patient", "Coverage", "ExplanationOfBenefit", "token")
_COUNTED: Final = re.compile(
    r"^/v[23]/(?:fhir/(Patient|Coverage|ExplanationOfBenefit)(?:/[^/]*)?|o/(token))/?$"
)


class RequestCounts:
    """The counts, shared by the middleware and the admin routes (one event loop: no lock)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def snapshot(self) -> dict[str, int]:
        return {kind: self.counts[kind] for kind in KINDS}

    def routes(self) -> list[BaseRoute]:
        return [Route("/_sandbox/requests", self.endpoint, methods=["GET", "DELETE"])]

    async def endpoint(self, request: Request) -> Response:
        counts = self.snapshot()
        if request.method == "DELETE":
            self.counts.clear()
        return JSONResponse(counts)


class RequestCountMiddleware:
    """Pure ASGI middleware: one count per matching request, then the app as usual."""

    def __init__(self, app: ASGIApp, counts: RequestCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = _COUNTED.match(scope.get("path", ""))
            if match:
                self.counts.counts[match[1] or match[2]] += 1
        await self.app(scope, receive, send)
