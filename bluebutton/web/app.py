"""`create_app(settings)`: the typed lifespan on the composition root, the routers, the error
handlers and the middleware, in the order they wrap each other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from bluebutton import __version__
from bluebutton.cms.client import CmsClient
from bluebutton.cms.pending import PendingStore
from bluebutton.connect.client import ConnectClient, LfhEnvelope
from bluebutton.fhir.validator import Validator
from bluebutton.metrics import Metrics
from bluebutton.pull.idempotency import IdempotentTransfer
from bluebutton.pull.idempotency_store import IdempotencyStore
from bluebutton.pull.pipeline import Transfer
from bluebutton.resources import Overrides, open_resources
from bluebutton.settings import Settings
from bluebutton.sync.service import open_sync
from bluebutton.web.body_limit import TOKEN_BODY_ROUTES, BodyLimit
from bluebutton.web.console import routes as console
from bluebutton.web.handlers import add_exception_handlers, outcome
from bluebutton.web.headers import SecurityHeaders
from bluebutton.web.http_metrics import HttpMetrics
from bluebutton.web.openapi import DESCRIPTION, document_models, serve_swagger_ui
from bluebutton.web.request_log import RequestLog
from bluebutton.web.routes import grants, oauth, pull
from bluebutton.web.routes import metrics as scrape
from bluebutton.web.schemas import ForwardedBundles, OperationOutcome
from bluebutton.web.state import State


def create_app(
    settings: Settings,
    *,
    cms: CmsClient | None = None,
    connect: ConnectClient | None = None,
    pending: PendingStore | None = None,
    validator: Validator | None = None,
    idempotency: IdempotencyStore | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The app. The lifespan opens the composition root (`open_resources`) and grant keeping on
    it; a resource passed in (tests pass clients on a virtual clock, or a store to inspect) stays
    its caller's to close."""

    registry = metrics or Metrics()  # before the lifespan: the middleware below counts into it
    overrides = Overrides(
        metrics=registry,
        cms=cms,
        connect=connect,
        validator=validator,
        pending=pending,
        idempotency=idempotency,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            resources = await stack.enter_async_context(open_resources(settings, overrides))
            sync = None
            if settings.sync_enabled:
                worker = settings.sync_worker == "embedded"
                sync = await stack.enter_async_context(open_sync(resources, worker=worker))
            transfer = Transfer(
                resources.cms,
                resources.validator,
                resources.connect,
                settings.lfh_max_bundle_bytes,
                settings.pull_timeout_seconds,
            )
            idempotent = IdempotentTransfer(transfer, resources.idempotency, settings.idempotency_ttl_seconds)
            yield State(resources=resources, idempotent=idempotent, sync=sync)

    app = FastAPI(
        title="bluebutton",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_exception_handlers(app)
    # Inside RequestLog, so a refused body is logged like any answer.
    app.add_middleware(
        BodyLimit, limits=TOKEN_BODY_ROUTES, render=lambda e: outcome(e.issues(), e.status_code, e.headers)
    )
    app.add_middleware(RequestLog)
    app.add_middleware(HttpMetrics, metrics=registry)
    app.add_middleware(SecurityHeaders, hsts=settings.tls)  # outermost: the safe 500 gets them too
    for module in (pull, oauth, grants, console, scrape):
        app.include_router(module.router)
    serve_swagger_ui(app)
    document_models(app, [LfhEnvelope, ForwardedBundles, OperationOutcome])
    return app
