"""The error handlers: every error answers as one FHIR `OperationOutcome` (or, for a browser on
the authorization routes, the HTML error page), with the headers the exception supplies."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from bluebutton.errors import BlueButtonError, DatabaseUnavailableError, Issue
from bluebutton.fhir.bundles import FHIR_JSON
from bluebutton.sync.database import unreachable
from bluebutton.web.allow import allowed_methods
from bluebutton.web.error_page import BROWSER_PATHS, error_page, wants_html


def outcome(issues: list[Issue], status: int, headers: dict[str, str] | None = None) -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}
    return Response(orjson.dumps(body), status, headers=headers, media_type=FHIR_JSON)


def _error_answer(
    request: Request, issues: list[Issue], status: int, headers: dict[str, str] | None = None
) -> Response:
    """An `OperationOutcome`, or the HTML error page for a browser on the authorization routes."""
    if request.url.path in BROWSER_PATHS and wants_html(request.headers.get("accept", "")):
        return error_page(issues, status, headers)
    return outcome(issues, status, headers)


async def _blue_button_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BlueButtonError)
    return _error_answer(request, exc.issues(), exc.status_code, exc.headers)


async def _request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            issues.append(
                _unparseable_body(
                    f"{err.get('ctx', {}).get('error', 'invalid')} at character {err['loc'][-1]}"
                )
            )
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path")]
        name = ".".join(loc) or "request"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        issues.append(Issue(f"{name}: {message}", code="invalid", expression=(name,)))
    return _error_answer(request, issues, 422)


def _unparseable_body(reason: str) -> Issue:
    return Issue(
        f"request body: not valid JSON ({reason}); send a UTF-8 JSON object such as "
        '{"token": "..."} with Content-Type: application/json, as /docs shows for this endpoint',
        code="invalid",
        expression=("body",),
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI's only 400: a body it could not decode (e.g. not UTF-8)
        return outcome([_unparseable_body(str(exc.detail))], 400)
    code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := allowed_methods(request)) is not None:
        headers["Allow"] = allowed  # every method of the path, not only the first route's
    return outcome([Issue(str(exc.detail), code)], exc.status_code, headers)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A route reached grant keeping's database while it was away: the one class of the tree that
    says so (503, Retry-After), never a 500. The sync layer raises it itself; this maps what
    reached the pool directly."""
    if not unreachable(exc):
        raise exc
    return await _blue_button_error(request, DatabaseUnavailableError())


def add_exception_handlers(app: FastAPI) -> None:
    """One handler for our error tree, one for FastAPI's validation, one for Starlette's 4xx, and
    the database's outage mapped onto the tree."""
    handlers: dict[Any, Any] = {
        BlueButtonError: _blue_button_error,
        RequestValidationError: _request_validation_error,
        StarletteHTTPException: _http_error,
        psycopg.OperationalError: _database_error,
        PoolTimeout: _database_error,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)
