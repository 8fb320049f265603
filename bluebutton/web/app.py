"""`create_app(settings)`: routers, the one error handler, request logging and the typed lifespan."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources
from typing import Any

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bluebutton import __version__
from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.cms.pending import PendingStore, open_pending_store
from bluebutton.connect.client import ConnectClient, LfhEnvelope
from bluebutton.errors import BlueButtonError, DatabaseUnavailableError, Issue
from bluebutton.fhir.bundles import FHIR_JSON
from bluebutton.fhir.validator import Validator
from bluebutton.metrics import HttpMetrics, Metrics, instrument
from bluebutton.outbound import build_ssl_context
from bluebutton.pull.idempotency import IdempotentTransfer
from bluebutton.pull.idempotency_store import IdempotencyStore, open_idempotency_store
from bluebutton.pull.pipeline import Transfer
from bluebutton.settings import Settings
from bluebutton.sync.database import unreachable
from bluebutton.sync.service import open_sync
from bluebutton.web.body_limit import TOKEN_BODY_ROUTES, BodyLimit
from bluebutton.web.console import routes as console_routes
from bluebutton.web.error_page import BROWSER_PATHS, error_page, wants_html
from bluebutton.web.headers import SecurityHeaders
from bluebutton.web.routes import grants as sync_routes
from bluebutton.web.routes.metrics import router as metrics_router
from bluebutton.web.routes.pull import router
from bluebutton.web.schemas import ForwardedBundles, OperationOutcome
from bluebutton.web.state import State

logger = logging.getLogger("bluebutton.access")


DESCRIPTION = """
Pulls a beneficiary's Medicare data (Patient, Coverage or ExplanationOfBenefit) from the CMS Blue
Button 2.0 API, every page of it, validates it as FHIR R4, and stores it in LinuxForHealth connect.

Errors are FHIR `OperationOutcome` resources whose issues say what was wrong and what to do.
"""


def outcome(issues: list[Issue], status: int, headers: dict[str, str] | None = None) -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}
    return Response(orjson.dumps(body), status, headers=headers, media_type=FHIR_JSON)


def _error_answer(
    request: Request, issues: list[Issue], status: int, headers: dict[str, str] | None = None
) -> Response:
    """An `OperationOutcome`, or the HTML error page for a browser on the authorization routes."""
    if request.url.path in BROWSER_PATHS and wants_html(request.headers.get("accept", "")):
        html, page_headers = error_page(issues, status)
        return HTMLResponse(html, status, headers={**(headers or {}), **page_headers})
    return outcome(issues, status, headers)


async def _blue_button_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BlueButtonError)
    return _error_answer(request, exc.issues(), exc.status_code, exc.headers)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A route reached grant keeping's database while it was away: 503 with Retry-After, never 500
    (the sync layer raises `DatabaseUnavailableError` itself; this catches what reached the pool
    directly)."""
    if not unreachable(exc):
        raise exc
    return await _blue_button_error(request, DatabaseUnavailableError())


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
    return outcome([Issue(str(exc.detail), code)], exc.status_code, dict(exc.headers or {}))


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


def create_app(
    settings: Settings,
    *,
    cms: CmsClient | None = None,
    connect: ConnectClient | None = None,
    pending: PendingStore | None = None,
    validator: Validator | None = None,
    idempotency: IdempotencyStore | None = None,
) -> FastAPI:
    """The app. The lifespan opens every resource not given here, and closes what it opened;
    a resource passed in (tests pass clients on a virtual clock, or a store to inspect) stays its
    caller's to close."""

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        # One exit stack: a start-up that fails halfway closes what it had opened, in reverse.
        async with AsyncExitStack() as stack:
            context = build_ssl_context(settings)
            cms_client = cms
            if cms_client is None:
                cms_client = await stack.enter_async_context(CmsClient.create(settings, context))
            connect_client = connect
            if connect_client is None:
                connect_client = await stack.enter_async_context(ConnectClient.create(settings, context))
            pending_store = pending
            if pending_store is None:
                pending_store = open_pending_store(settings.state_store, settings.state_max_pending)
                stack.push_async_callback(pending_store.aclose)
            idempotency_store = idempotency
            if idempotency_store is None:
                idempotency_store = open_idempotency_store(settings.state_store)
                stack.push_async_callback(idempotency_store.aclose)
            validation = validator
            if validation is None:
                validation = Validator(settings.validation_workers, fast=settings.fast_validation)
                await stack.enter_async_context(validation)
            instrument(cms_client.http, "cms", metrics)
            instrument(connect_client, "connect", metrics)
            oauth = OAuthClient(settings, cms_client.http)
            sync = None
            if settings.sync_enabled:
                worker = settings.sync_worker == "embedded"
                sync = await stack.enter_async_context(
                    open_sync(settings, cms_client, oauth, connect_client, validation, worker=worker)
                )
            transfer = Transfer(
                cms_client,
                validation,
                connect_client,
                settings.lfh_max_bundle_bytes,
                settings.pull_timeout_seconds,
            )
            yield State(
                settings=settings,
                cms=cms_client,
                connect=connect_client,
                validator=validation,
                oauth=oauth,
                pending=pending_store,
                transfer=transfer,
                idempotent=IdempotentTransfer(transfer, idempotency_store, settings.idempotency_ttl_seconds),
                sync=sync,
            )

    app = FastAPI(
        title="bluebutton",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    handlers: dict[Any, Any] = {
        BlueButtonError: _blue_button_error,
        RequestValidationError: _request_validation_error,
        StarletteHTTPException: _http_error,
        psycopg.OperationalError: _database_error,
        PoolTimeout: _database_error,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)
    # Inside RequestLog, so a refused body is logged like any answer.
    app.add_middleware(
        BodyLimit, limits=TOKEN_BODY_ROUTES, render=lambda e: outcome(e.issues(), e.status_code, e.headers)
    )
    app.add_middleware(RequestLog)
    app.add_middleware(HttpMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders, hsts=settings.tls)  # outermost: the safe 500 gets them too
    app.state.metrics = metrics
    app.include_router(router)
    app.include_router(sync_routes.router)
    app.include_router(console_routes.router)
    app.include_router(metrics_router)
    _serve_swagger_ui(app)
    _document_models(app, [LfhEnvelope, ForwardedBundles, OperationOutcome])
    return app


def _serve_swagger_ui(app: FastAPI) -> None:
    """Swagger UI at /docs from a local copy: FastAPI's default loads it from a CDN, which
    leaves /docs blank offline, in air-gapped deployments, and in our own sandbox."""
    assets = resources.files("fastapi_offline") / "static"  # Swagger UI 5 (OpenAPI 3.1)
    app.mount("/static/swagger-ui", StaticFiles(directory=str(assets)), name="swagger-ui")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "syntaxHighlight": False},
        )

    app.add_api_route("/docs", docs, include_in_schema=False)


def _document_models(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add schemas that responses reference by `$ref` but FastAPI does not collect itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # FastAPI caches it in app.openapi_schema; we extend that copy
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        _validation_errors_are_outcomes(schema)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for model in models:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _validation_errors_are_outcomes(schema: dict[str, Any]) -> None:
    """FastAPI documents its 422 as `application/json` `HTTPValidationError`; the handler above
    answers every 422 as an `OperationOutcome` in `application/fhir+json`: document that."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["description"] = "FHIR OperationOutcome"
                response["content"] = {
                    FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
                }
