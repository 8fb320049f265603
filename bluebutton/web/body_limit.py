"""A cap on request bodies of the routes that take a small JSON body, applied before the body is read.

FastAPI reads a route's body whole (and parses it on the event loop) before any dependency runs,
so the cap stands in front of the app as ASGI middleware: a declared `Content-Length` over the cap
is refused unread, and a chunked body is counted as it arrives and refused at the first chunk past
the cap. A body within the cap (at most the cap is held) is handed on unchanged. Other routes are
not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bluebutton.errors import BlueButtonError, BodyTooLargeError

# A refresh token or an access token is well under 1 KB; 16 KB leaves room for any client's JSON.
TOKEN_BODY_BYTES = 16 * 1024
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
            await self._refuse(scope, receive, send, limit, f"declares Content-Length {declared}")
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

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int, what: str) -> None:
        error = BodyTooLargeError(
            f"The request body {what}; {_route_path(scope)} takes at most {limit} bytes of JSON "
            '(e.g. {"token": "..."}). Send only the token.',
            # The rest of the body is never read, so the connection cannot carry another request.
            headers={"Connection": "close"},
        )
        await self.render(error)(scope, receive, send)


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
