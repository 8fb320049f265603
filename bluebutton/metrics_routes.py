"""`GET /metrics` (Prometheus text format), behind the operator key unless made public."""

from __future__ import annotations

import hmac
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import APIKeyHeader

from bluebutton.errors import NotConfiguredError
from bluebutton.metrics import CONTENT_TYPE, Metrics, read_database
from bluebutton.settings import Settings
from bluebutton.sync.errors import AdminKeyError
from bluebutton.sync.grants import STATES
from bluebutton.sync.service import SyncService

router = APIRouter(tags=["operations"])

_api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="AdminApiKey",
    description="The operator key, BLUEBUTTON_ADMIN_API_KEY (for /bluebutton/grants and /bluebutton/runs).",
)


def _scraper(request: Request, key: Annotated[str | None, Depends(_api_key)]) -> None:
    settings = cast(Settings, request.state.settings)
    if settings.metrics_public:
        return
    expected = settings.admin_api_key
    if expected is None:
        raise NotConfiguredError(
            "/metrics is protected by the operator key: set BLUEBUTTON_ADMIN_API_KEY (at least 32 "
            "characters), or BLUEBUTTON_METRICS_PUBLIC=true for a scraper inside a private network."
        )
    if not key:
        raise AdminKeyError("No X-API-Key header: send 'X-API-Key: <BLUEBUTTON_ADMIN_API_KEY>'.")
    if not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise AdminKeyError("The X-API-Key is not the operator key (BLUEBUTTON_ADMIN_API_KEY).")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(_scraper)],
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    sync = cast(SyncService | None, getattr(request.state, "sync", None))
    database = await read_database(sync.pool, STATES) if sync is not None else None
    body = cast(Metrics, request.app.state.metrics).render(database)
    return Response(body, media_type=CONTENT_TYPE)
