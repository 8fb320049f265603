"""The request log: one line per request, an `X-Request-ID` on every answer, and a safe 500."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bluebutton.errors import Issue
from bluebutton.web.handlers import outcome

logger = logging.getLogger("bluebutton.access")


class RequestLog:
    """One log line per request (method, path, status, duration, id) and a safe 500.

    The query string is never logged: it can carry an authorization code or a patient id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            if not response_started:
                response = outcome(
                    [Issue(f"Internal error; quote request id {request_id} when reporting it.")],
                    500,
                    {"X-Request-ID": request_id},
                )
                await response(scope, receive, send)
        finally:
            logger.info(
                "%s %s %d %.1fms id=%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )
