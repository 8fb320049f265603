"""A cap on request bodies of the routes that take a small JSON body, applied before the body is read.

FastAPI reads a route's body whole (and parses it on the event loop) before any dependency runs,
so the cap stands in front of the app as ASGI middleware: a declared `Content-Length` over the cap
is refused unread, and a chunked body is counted as it arrives and refused at the first chunk past
the cap. A body within the cap (at most the cap is held) is handed on unchanged. Other routes are
not touched.

A declared body of at most `DRAIN_BYTES` is read to its end and dropped before the 413 (held
never more than a chunk), and the connection stays usable: closing a socket with unread data makes
the kernel reset the connection, and a client still sending (any ordinary client posting 1 MB)
would get the reset instead of the 413. Bigger or chunked bodies are not waited for: the 413 goes
at once with `Connection: close`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bluebutton.errors import BlueButtonError, BodyTooLargeError

# A refresh token or an access token is well under 1 KB; 16 KB leaves room for any client's JSON.
TOKEN_BODY_BYTES = 16 * 1024
DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_SECONDS = 10.0  # a client that stops sending is not waited for longer
TOKEN_BODY_ROUTES: Mapping[str, int] = {
    "/bluebutton/refresh": TOKEN_BODY_BYTES,
    "/bluebutton/revoke": TOKEN_BODY_BYTES,
}

Render = Callable[[BlueButtonError], ASGIApp]


class BodyLimit:
    """Refuse bodies over `limits[path]` with 413; `render` turns the error into the app's answer
    (the one OperationOutcome rendering), since middleware runs outside the exception handlers."""

    def __init__(self, app: ASGIApp, *, limits: Mapping[str, int], render: Render) -> None:
        self.app = app
        self.limits = dict(limits)
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(_route_path(scope)) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            drained = declared <= DRAIN_BYTES and await _drain(receive)
            await self._refuse(scope, receive, send, limit, f"declares Content-Length {declared}", drained)
            return
        body: list[bytes] = []
        size = 0
        last: Message = {"type": "http.request", "body": b"", "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                last = message  # the client left: the app sees that instead of a body
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, limit, f"sent more than {limit} bytes")
                return
            body.append(chunk)
            if not message.get("more_body", False):
                last = {"type": "http.request", "body": b"".join(body), "more_body": False}
                break
        await self.app(scope, _replay(last, receive), send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, limit: int, what: str, drained: bool = False
    ) -> None:
        error = BodyTooLargeError(
            f"The request body {what}; {_route_path(scope)} takes at most {limit} bytes of JSON "
            '(e.g. {"token": "..."}). Send only the token.',
            # Unless it was drained, the rest of the body is never read, so the connection cannot
            # carry another request.
            headers={} if drained else {"Connection": "close"},
        )
        await self.render(error)(scope, receive, send)


async def _drain(receive: Receive) -> bool:
    """Read a refused body to its end, dropping it; False if the client left or stalled."""
    with anyio.move_on_after(DRAIN_SECONDS):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            if not message.get("more_body", False):
                return True
    return False


def _route_path(scope: Scope) -> str:
    """The path the router matches: behind a proxy prefix (`root_path`), without it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _replay(first: Message, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then whatever the server sends next."""
    pending = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
