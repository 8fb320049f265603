"""`GET /metrics` (Prometheus text format), behind the operator key unless made public."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from bluebutton.metrics import CONTENT_TYPE, database_down, read_database
from bluebutton.sync.database import unreachable
from bluebutton.sync.grants import STATES
from bluebutton.web.deps import ApiKeyDep, MetricsDep, SettingsDep, SyncDep, check_admin_key
from bluebutton.web.schemas import outcome_responses

router = APIRouter(tags=["operations"])


def _scraper(request: Request, settings: SettingsDep, key: ApiKeyDep) -> None:
    if not settings.metrics_public:
        check_admin_key(
            request,
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
        **outcome_responses(401, 429, 503),
    },
)
async def metrics(metrics: MetricsDep, sync: SyncDep) -> Response:
    database = None
    if sync is not None:
        try:
            database = await read_database(sync.pool, STATES, sync.context.settings.sync_stalled_seconds)
        except Exception as e:  # the scrape still answers, saying the database is down
            if not unreachable(e):
                raise
            database = database_down()
    return Response(metrics.render(database), media_type=CONTENT_TYPE)
