"""`GET /metrics` (Prometheus text format), behind the operator key unless made public."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from bluebutton.metrics import CONTENT_TYPE, Metrics, database_down, read_database
from bluebutton.settings import Settings
from bluebutton.sync.database import unreachable
from bluebutton.sync.grants import STATES
from bluebutton.sync.service import SyncService
from bluebutton.web.routes.grants import api_key, check_admin_key
from bluebutton.web.schemas import outcome_responses

router = APIRouter(tags=["operations"])


def _scraper(request: Request, key: Annotated[str | None, Depends(api_key)]) -> None:
    settings = cast(Settings, request.state.settings)
    if not settings.metrics_public:
        check_admin_key(
            settings,
            key,
            off="/metrics is protected by the operator key: set BLUEBUTTON_ADMIN_API_KEY (at least 32 "
            "characters), or BLUEBUTTON_METRICS_PUBLIC=true for a scraper inside a private network.",
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(_scraper)],
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
        **outcome_responses(401, 503),
    },
)
async def metrics(request: Request) -> Response:
    sync = cast(SyncService | None, getattr(request.state, "sync", None))
    database = None
    if sync is not None:
        try:
            database = await read_database(sync.pool, STATES, sync.context.settings.sync_stalled_seconds)
        except Exception as e:  # the scrape still answers, saying the database is down
            if not unreachable(e):
                raise
            database = database_down()
    body = cast(Metrics, request.app.state.metrics).render(database)
    return Response(body, media_type=CONTENT_TYPE)
