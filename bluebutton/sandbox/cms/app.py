"""`create_cms_app`: the emulator's OAuth, FHIR and admin routes behind its fault middleware."""

from __future__ import annotations

from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import Receive, Scope, Send

from bluebutton.sandbox.cms.admin import AdminApi
from bluebutton.sandbox.cms.clock import EmulatedClock
from bluebutton.sandbox.cms.config import CmsSandboxConfig
from bluebutton.sandbox.cms.counts import RequestCountMiddleware, RequestCounts
from bluebutton.sandbox.cms.data import CmsDataset
from bluebutton.sandbox.cms.faults import RAW_SEND_KEY, FaultMiddleware, FaultState
from bluebutton.sandbox.cms.fhir import FhirApi
from bluebutton.sandbox.cms.oauth import OAuthApi
from bluebutton.sandbox.cms.ratelimit import Throttle, ThrottleMiddleware
from bluebutton.sandbox.cms.schedule import ClaimSchedule
from bluebutton.sandbox.cms.state import StateFile, StateMiddleware, restore, save_state
from bluebutton.sandbox.cms.tokens import TokenStore
from bluebutton.sandbox.cms.v3admin import V3Admin
from bluebutton.sandbox.cms.v3data import V3State
from bluebutton.sandbox.cms.v3fhir import V3FhirApi
from bluebutton.sandbox.cms.v3oauth import V3OAuthApi


class CmsApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope, so a fault can drop the socket."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


def create_cms_app(config: CmsSandboxConfig) -> Starlette:
    """A fresh emulator (empty token store), or the one `config.state_path` kept; `app.state`
    exposes its parts to tests."""
    clock = EmulatedClock(config.clock)
    tokens = TokenStore(
        clock=clock,
        access_token_seconds=config.access_token_seconds,
        code_seconds=config.code_seconds,
        approval_seconds=config.approval_seconds,
    )
    dataset = CmsDataset(config.claims_override, config.cached_users, None, clock)
    faults = FaultState(config.faults.model_copy())
    counts = RequestCounts()
    middleware = [
        # Outermost: CMS gzips on `Accept-Encoding: gzip` above 1 KB (bb2-api.md §5).
        Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6),
        Middleware(RequestCountMiddleware, counts=counts),  # before faults: they count too
        Middleware(FaultMiddleware, state=faults, base_latency_ms=config.latency_ms, sleep=config.sleep),
    ]
    v3 = V3State()
    throttle = Throttle(clock)
    # After faults: a fault's 429 has no headers.
    middleware.append(Middleware(ThrottleMiddleware, throttle=throttle))
    admin = AdminApi(tokens, dataset, faults, config.faults, clock)
    admin.on_reset += [v3.reset, throttle.reset]
    epoch = clock()
    if config.state_path is not None:
        state_file = StateFile(config.state_path)
        saved = state_file.load()
        if saved is not None:
            epoch = restore(saved, tokens, clock, dataset)
        save = partial(save_state, state_file, tokens, clock, epoch, dataset)
        middleware.append(Middleware(StateMiddleware, save=save))  # innermost: next to the change
    dataset.schedule = ClaimSchedule(epoch, config.weekly_claims)
    routes = (
        OAuthApi(config, tokens).routes()
        + FhirApi(config, tokens, dataset, faults).routes()
        + V3OAuthApi(config, tokens, v3).routes()
        + V3FhirApi(config, tokens, dataset, faults, v3).routes()
        + admin.routes()
        + V3Admin(v3).routes()
        + throttle.routes()
        + counts.routes()
    )
    app = CmsApp(routes=routes, middleware=middleware)
    app.state.config = config
    app.state.clock = clock
    app.state.tokens = tokens
    app.state.dataset = dataset
    app.state.faults = faults
    app.state.counts = counts
    app.state.v3 = v3
    app.state.throttle = throttle
    return app
