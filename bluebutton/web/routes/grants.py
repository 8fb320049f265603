"""The operator API under /bluebutton/grants and /bluebutton/runs.

Every operator route needs `X-API-Key: <BLUEBUTTON_ADMIN_API_KEY>` (compared in constant time).
Without a database the routes answer 503 naming the settings to add; without a key, 503 too.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from bluebutton.sync import listing
from bluebutton.sync.errors import GrantKeepingStalledError, RunNotFoundError
from bluebutton.sync.grants import STATES, GrantState
from bluebutton.sync.keyset import MAX_CURSOR
from bluebutton.sync.listing import PATIENT_SEARCH
from bluebutton.sync.service import SyncService
from bluebutton.web.deps import AdminDep, require_sync
from bluebutton.web.grant_schemas import (
    GrantInfo,
    GrantList,
    RecordList,
    RunInfo,
    RunList,
    RunQueued,
)
from bluebutton.web.schemas import outcome_responses

router = APIRouter(tags=["grants"])

_COMMON = outcome_responses(401, 404, 422, 429, 503)
MAX_PAGE = 1000  # a page of 1,000 grants is about 1 MB of JSON; more is what cursors are for


PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size, at most {MAX_PAGE}")]
Cursor = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR, description="`next_cursor` of the previous page; none: the first"),
]


@router.get(
    "/bluebutton/grants",
    summary="List stored grants, a page at a time",
    response_model=GrantList,
    responses=_COMMON,
)
async def list_grants(
    service: AdminDep,
    state: Annotated[
        GrantState | None, Query(description="Only grants in this state: " + ", ".join(STATES))
    ] = None,
    patient: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=PATIENT_SEARCH,
            description="Only grants whose patient id starts with this (no control characters)",
        ),
    ] = None,
    limit: PageSize = 100,
    cursor: Cursor = None,
) -> Response:
    page, counts = await service.jobs.database(
        lambda: listing.grants_page(service.pool, state=state, patient=patient, limit=limit, cursor=cursor)
    )
    body = GrantList.model_validate(
        {"grants": page.items, "next_cursor": page.next_cursor, "limit": limit, "total": page.total}
        | {"counts": counts}
    )
    # Validated once above and serialized by pydantic-core: a page of 1,000 grants is about 1 MB, and
    # FastAPI's default would validate it again and encode it with the standard json module.
    return Response(body.model_dump_json(), media_type="application/json")


@router.get(
    "/bluebutton/grants/{grant_id}", summary="One grant, its last run and quarantine", responses=_COMMON
)
async def get_grant(grant_id: uuid.UUID, service: AdminDep) -> GrantInfo:
    return GrantInfo.model_validate(await service.grant_json(grant_id))


@router.post(
    "/bluebutton/grants/{grant_id}/sync",
    summary="Queue a run now (or get the one already waiting)",
    status_code=202,
    responses=outcome_responses(401, 404, 409, 422, 429, 503),
)
async def sync_now(grant_id: uuid.UUID, service: AdminDep, response: Response) -> RunQueued:
    """While a run of the grant is queued or running, this answers that run: any number of
    presses make one run."""
    run_id = await service.sync_now(grant_id)
    response.headers["Location"] = f"/bluebutton/runs/{run_id}"
    return RunQueued(run_id=run_id)


@router.get(
    "/health/grant-keeping",
    tags=["service"],
    summary="200 while grant keeping can progress, 503 while it cannot (for monitors)",
    responses=outcome_responses(503),
)
async def grant_keeping_health(service: Annotated[SyncService, Depends(require_sync)]) -> JSONResponse:
    """The state `/health` reports under `grant_keeping`, with a status that follows it: 503 (an
    OperationOutcome saying why) while the database is unreachable or no worker has a fresh
    heartbeat."""
    state = await service.health()
    if not state["progressing"]:
        why = (
            "its database is unreachable"
            if state["database"] == "unreachable"
            else "no sync worker has a fresh heartbeat"
        )
        raise GrantKeepingStalledError(f"Grant keeping cannot progress: {why}.")
    return JSONResponse(state)


@router.get("/bluebutton/grants/{grant_id}/runs", summary="The grant's runs, newest first", responses=_COMMON)
async def grant_runs(
    grant_id: uuid.UUID, service: AdminDep, limit: PageSize = 100, cursor: Cursor = None
) -> RunList:
    await service.grant(grant_id)
    page = await service.jobs.database(lambda: listing.runs_page(service.pool, grant_id, limit, cursor))
    return RunList.model_validate(
        {"runs": page.items, "next_cursor": page.next_cursor, "limit": limit, "total": page.total}
    )


@router.get(
    "/bluebutton/grants/{grant_id}/records",
    summary="Where connect holds the latest version of each of the grant's resources",
    responses=_COMMON,
)
async def grant_records(
    grant_id: uuid.UUID, service: AdminDep, limit: PageSize = MAX_PAGE, cursor: Cursor = None
) -> RecordList:
    await service.grant(grant_id)
    page = await service.jobs.database(lambda: listing.records_page(service.pool, grant_id, limit, cursor))
    return RecordList.model_validate(
        {"records": page.items, "next_cursor": page.next_cursor, "limit": limit, "total": page.total}
    )


@router.delete(
    "/bluebutton/grants/{grant_id}",
    summary="Disconnect: revoke at CMS, erase the tokens (runs and ledger stay)",
    status_code=204,
    response_class=Response,
    responses=outcome_responses(401, 404, 422, 429, 502, 503),
)
async def disconnect(grant_id: uuid.UUID, service: AdminDep) -> Response:
    await service.disconnect(grant_id)
    return Response(status_code=204)


@router.get("/bluebutton/runs/{run_id}", summary="One run", responses=_COMMON)
async def get_run(run_id: int, service: AdminDep) -> RunInfo:
    found = await service.run_json(run_id)
    if found is None:
        raise RunNotFoundError(f"No run {run_id}.")
    return RunInfo.model_validate(found)
