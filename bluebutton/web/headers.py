"""Security headers on every answer, set in one place rather than route by route.

- `Cache-Control: no-store` under `/bluebutton/`: those answers carry FHIR data or tokens, which no
  browser or proxy cache may keep (a route's own `Cache-Control` wins).
- `Strict-Transport-Security` when the service itself serves TLS (RFC 6797: only over HTTPS).
- Swagger UI at `/docs` may not be framed (`frame-ancestors 'none'`, and `X-Frame-Options` for old
  browsers): a framing page could trick a user into clicking Authorize or Execute (clickjacking).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_STORE_PREFIX = "/bluebutton/"
UNFRAMABLE_PATHS = frozenset({"/docs"})
HSTS = b"max-age=31536000"  # one year, the value RFC 6797 §11.2 and browsers' preload lists expect


class SecurityHeaders:
    """Pure ASGI middleware: adds the headers to `http.response.start`, streaming untouched."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra: list[tuple[bytes, bytes]] = []
        if self.hsts:
            extra.append((b"strict-transport-security", HSTS))
        if path in UNFRAMABLE_PATHS:
            extra += [(b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY")]
        no_store = path.startswith(NO_STORE_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if no_store and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                headers += [(name, value) for name, value in extra if name not in names]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
