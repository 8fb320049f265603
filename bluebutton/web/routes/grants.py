"""The operator API under /bluebutton/grants and /bluebutton/runs, and the sync=true callback answer.

Every operator route needs `X-API-Key: <BLUEBUTTON_ADMIN_API_KEY>` (compared in constant time).
Without a database the routes answer 503 naming the settings to add; without a key, 503 too.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader

from bluebutton.cms.oauth import TokenSet
from bluebutton.errors import NotConfiguredError
from bluebutton.settings import Settings
from bluebutton.sync import ledger, runs
from bluebutton.sync.errors import AdminKeyError, RunNotFoundError
from bluebutton.sync.grants import STATES, GrantState
from bluebutton.sync.service import SyncService, sync_off
from bluebutton.web.enrolled_page import enrolled_page
from bluebutton.web.grant_schemas import (
    Enrolment,
    GrantInfo,
    GrantList,
    RecordList,
    RunInfo,
    RunList,
    RunQueued,
)
from bluebutton.web.schemas import outcome_responses

router = APIRouter(tags=["grants"])

api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="AdminApiKey",
    description="The operator key, BLUEBUTTON_ADMIN_API_KEY (for /bluebutton/grants and /bluebutton/runs).",
)


def require_sync(request: Request) -> SyncService:
    service = cast(SyncService | None, getattr(request.state, "sync", None))
    if service is None:
        raise sync_off()
    return service


def admin(request: Request, key: Annotated[str | None, Depends(api_key)]) -> SyncService:
    service = require_sync(request)
    check_admin_key(
        cast(Settings, request.state.settings),
        key,
        off="The operator API is off: set BLUEBUTTON_ADMIN_API_KEY (at least 32 characters).",
    )
    return service


def check_admin_key(settings: Settings, key: str | None, *, off: str) -> None:
    """The operator key, compared in constant time; `off` says what to set when there is none."""
    expected = settings.admin_api_key
    if expected is None:
        raise NotConfiguredError(off)
    if not key:
        raise AdminKeyError("No X-API-Key header: send 'X-API-Key: <BLUEBUTTON_ADMIN_API_KEY>'.")
    if not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise AdminKeyError("The X-API-Key is not the operator key (BLUEBUTTON_ADMIN_API_KEY).")


AdminDep = Annotated[SyncService, Depends(admin)]
_COMMON = outcome_responses(401, 404, 422, 503)


@router.get("/bluebutton/grants", summary="List stored grants", responses=_COMMON)
async def list_grants(
    service: AdminDep,
    state: Annotated[
        GrantState | None, Query(description="Only grants in this state: " + ", ".join(STATES))
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> GrantList:
    return GrantList.model_validate({"grants": await service.grants_json(state, limit)})


@router.get(
    "/bluebutton/grants/{grant_id}", summary="One grant, its last run and quarantine", responses=_COMMON
)
async def get_grant(grant_id: uuid.UUID, service: AdminDep) -> GrantInfo:
    return GrantInfo.model_validate(await service.grant_json(grant_id))


@router.post(
    "/bluebutton/grants/{grant_id}/sync",
    summary="Queue a run now (or get the one already waiting)",
    status_code=202,
    responses=outcome_responses(401, 404, 409, 422, 503),
)
async def sync_now(grant_id: uuid.UUID, service: AdminDep) -> RunQueued:
    return RunQueued(run_id=await service.sync_now(grant_id))


@router.get("/bluebutton/grants/{grant_id}/runs", summary="The grant's runs, newest first", responses=_COMMON)
async def grant_runs(
    grant_id: uuid.UUID, service: AdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> RunList:
    await service.grant(grant_id)
    found = await runs.of_grant(service.pool, grant_id, limit)
    return RunList.model_validate({"runs": [runs.as_json(r) for r in found]})


@router.get(
    "/bluebutton/grants/{grant_id}/records",
    summary="Where connect holds the latest version of each of the grant's resources",
    responses=_COMMON,
)
async def grant_records(grant_id: uuid.UUID, service: AdminDep) -> RecordList:
    await service.grant(grant_id)
    return RecordList.model_validate({"records": await ledger.records(service.pool, grant_id)})


@router.delete(
    "/bluebutton/grants/{grant_id}",
    summary="Disconnect: revoke at CMS, erase the tokens (runs and ledger stay)",
    status_code=204,
    response_class=Response,
    responses=outcome_responses(401, 404, 422, 502, 503),
)
async def disconnect(grant_id: uuid.UUID, service: AdminDep) -> Response:
    await service.disconnect(grant_id)
    return Response(status_code=204)


@router.get("/bluebutton/runs/{run_id}", summary="One run", responses=_COMMON)
async def get_run(run_id: int, service: AdminDep) -> RunInfo:
    row = await runs.get(service.pool, run_id)
    if row is None:
        raise RunNotFoundError(f"No run {run_id}.")
    return RunInfo.model_validate(runs.as_json(row))


async def enrolled(request: Request, tokens: TokenSet, *, html: bool) -> Response:
    """The callback's answer for sync=true: the grant is stored, the refresh token never leaves."""
    grant_id, run_id = await require_sync(request).enrol(tokens)
    if html:
        page, headers = enrolled_page(tokens, grant_id)
        return HTMLResponse(page, headers=headers)
    body = Enrolment(
        grant_id=grant_id,
        run_id=run_id,
        patient=tokens.patient,
        api_version=tokens.api_version,
        scope=tokens.scope,
        access_grant_expiration=tokens.access_grant_expiration,
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
    )
    return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
