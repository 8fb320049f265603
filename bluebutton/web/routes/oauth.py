"""The OAuth surface: start an authorization, take CMS's callback (a token set, or with
sync=true a stored grant), refresh and revoke tokens, and the beneficiary's userinfo."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response

from bluebutton.cms.oauth import TokenSet, callback_error, new_pending_authorization
from bluebutton.cms.versions import ApiVersion
from bluebutton.errors import CmsError, Issue, OAuthError
from bluebutton.web.deps import BearerTokenDep, CmsDep, OAuthDep, PendingDep, SettingsDep, require_sync
from bluebutton.web.error_page import wants_html
from bluebutton.web.grant_schemas import Enrolment
from bluebutton.web.pages import render
from bluebutton.web.schemas import (
    AuthorizeLink,
    RefreshRequest,
    RevokeRequest,
    TokenResponse,
    Userinfo,
    outcome_responses,
)

router = APIRouter()

STATE_SPENT = Issue(
    "This authorization is used up: its state is single-use and this callback spent it, so "
    "reloading the page cannot succeed. Start again at GET /bluebutton/authorize.",
    code="security",
    severity="information",
)


VersionQuery = Annotated[
    ApiVersion | None,
    Query(description="The Blue Button API version (2 or 3); default BLUEBUTTON_CMS_API_VERSION"),
]


@router.get(
    "/bluebutton/userinfo",
    tags=["bluebutton"],
    summary="The beneficiary's profile (CMS userinfo; needs the profile scope)",
    response_model=Userinfo,
    responses=outcome_responses(401, 403, 404, 429, 502, 504),
)
async def userinfo(
    request: Request, token: BearerTokenDep, cms: CmsDep, version: VersionQuery = None
) -> JSONResponse:
    """What the CMS SDK reads as the profile: name, email and patient id from Blue Button's
    `/v{n}/connect/userinfo`, as CMS sent it. 403 when the beneficiary withheld demographic data
    (no `profile` scope). Nothing is stored in connect."""
    unknown = sorted({name for name in request.query_params if name != "version"})
    if unknown:  # as GET /bluebutton/fhir: a misspelt `version` must not silently mean the default
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", n), "msg": "unknown parameter", "input": None}
                for n in unknown
            ]
        )
    return JSONResponse(await cms.get_userinfo(token, version))


def _wants_html(request: Request) -> bool:
    return wants_html(request.headers.get("accept", ""))


@router.get(
    "/bluebutton/authorize",
    tags=["oauth"],
    summary="Start authorizing with Blue Button (state + PKCE S256)",
    response_model=AuthorizeLink,
    responses={307: {"description": "Browsers are redirected to CMS"}, **outcome_responses(503)},
)
async def authorize(
    request: Request,
    settings: SettingsDep,
    oauth: OAuthDep,
    pending: PendingDep,
    sync: Annotated[
        bool, Query(description="true: the service keeps the grant and keeps the data current in connect")
    ] = False,
    version: VersionQuery = None,
) -> Response | AuthorizeLink:
    """Browsers go straight to CMS; API clients (Swagger) get the URL to open. The callback
    exchanges the code on the same version (v3: its pilot users, BBUser09001-09005 in the sandbox)."""
    if sync:
        require_sync(request)
    authorization = new_pending_authorization(sync, version or settings.cms_api_version)
    url = oauth.authorization_url(authorization)
    await pending.put(authorization, settings.state_ttl_seconds)
    if _wants_html(request):
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    return AuthorizeLink(authorize_url=url, expires_in=settings.state_ttl_seconds)


@router.get(
    "/bluebutton/authorize_callback",
    tags=["oauth"],
    summary="CMS redirects the browser here with a code (or an error)",
    response_model=TokenResponse,
    responses={200: {"content": {"text/html": {}}}, **outcome_responses(400, 403, 502, 503)},
)
async def authorize_callback(
    request: Request,
    oauth: OAuthDep,
    pending: PendingDep,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=128)] = None,
    error_description: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response | TokenResponse:
    oauth.credentials()  # 503 before the state is spent, when the client is not configured
    authorization = await pending.take(state) if state else None
    if error is not None:
        raise callback_error(error, error_description)
    if authorization is None:
        raise OAuthError(
            "Unknown, expired (10 minutes) or already used state: this callback does not belong "
            "to an authorization this service started. Start again at GET /bluebutton/authorize."
        )
    if not code:
        raise OAuthError("The callback has no code. Start again at GET /bluebutton/authorize.")
    if authorization.sync:
        require_sync(request)  # before the single-use code is spent
    try:
        tokens = await oauth.exchange_code(code, authorization.verifier, authorization.version)
    except CmsError as e:
        e.extra_issues.append(STATE_SPENT)  # the state is gone: retrying this callback cannot work
        raise
    if authorization.sync:
        return await enrolled(request, tokens, html=_wants_html(request))
    if _wants_html(request):
        return render("callback.html", script=True, tokens=tokens)
    return JSONResponse(tokens.as_dict(), headers={"Cache-Control": "no-store"})


@router.post(
    "/bluebutton/refresh",
    tags=["oauth"],
    summary="Exchange a refresh token for a new token set (refresh tokens are single-use)",
    response_model=TokenResponse,
    responses=outcome_responses(400, 401, 413, 422, 502, 503),
)
async def refresh(body: RefreshRequest, oauth: OAuthDep) -> JSONResponse:
    tokens = await oauth.refresh(body.refresh_token, body.api_version)
    return JSONResponse(tokens.as_dict(), headers={"Cache-Control": "no-store"})


@router.post(
    "/bluebutton/revoke",
    tags=["oauth"],
    summary="Revoke an access or refresh token (RFC 7009)",
    status_code=204,
    response_class=Response,
    responses=outcome_responses(400, 413, 422, 502, 503),
)
async def revoke(body: RevokeRequest, oauth: OAuthDep) -> Response:
    await oauth.revoke(body.token, body.api_version)
    return Response(status_code=204)


async def enrolled(request: Request, tokens: TokenSet, *, html: bool) -> Response:
    """The callback's answer for sync=true: the grant is stored, the refresh token never leaves."""
    grant_id, run_id = await require_sync(request).enrol(tokens)
    if html:
        grant_page = f"/bluebutton/console/grants/{grant_id}"  # the console's; the JSON API needs a key
        return render("enrolled.html", tokens=tokens, grant_id=grant_id, grant_page=grant_page)
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
