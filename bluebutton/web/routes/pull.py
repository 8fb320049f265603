"""The HTTP surface: parse, call, answer. Errors are raised, and rendered by the app's handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from bluebutton.cms.oauth import callback_error, new_pending_authorization
from bluebutton.cms.versions import ApiVersion
from bluebutton.errors import CmsError, Issue, OAuthError
from bluebutton.pull.idempotency import HEADER_DOC
from bluebutton.web.callback_page import callback_page
from bluebutton.web.deps import (
    BearerTokenDep,
    CmsDep,
    FhirQueryDep,
    IdempotentDep,
    OAuthDep,
    PendingDep,
    SettingsDep,
    ValidatorDep,
)
from bluebutton.web.error_page import wants_html
from bluebutton.web.routes import grants as sync_routes
from bluebutton.web.schemas import (
    AuthorizeLink,
    Health,
    RefreshRequest,
    RevokeRequest,
    TokenResponse,
    Userinfo,
    outcome_responses,
)

router = APIRouter()

VERSION_HEADER = "X-Blue-Button-Version"  # which API version a pull used (its token's)
VersionQuery = Annotated[
    ApiVersion | None,
    Query(description="The Blue Button API version (2 or 3); default BLUEBUTTON_CMS_API_VERSION"),
]

STATE_SPENT = Issue(
    "This authorization is used up: its state is single-use and this callback spent it, so "
    "reloading the page cannot succeed. Start again at GET /bluebutton/authorize.",
    code="security",
    severity="information",
)


@router.get("/health", tags=["service"])
async def health(validator: ValidatorDep) -> Health:
    """Liveness: answers without touching any upstream. `validation` says whether the validation
    workers run with the speedup patches (`fast`) or the library as it is (`standard`)."""
    return Health(validation=validator.mode)


FHIR_DOC = """Pull every page of a Blue Button search, validate it as FHIR R4, and store it in
LinuxForHealth connect as one or more `searchset` Bundles (each under
`BLUEBUTTON_LFH_MAX_BUNDLE_BYTES`).

- `return_cms=false`: connect's envelope, unchanged, when one Bundle sufficed; otherwise
  `ForwardedBundles` listing every envelope in order.
- `return_cms=true`: the merged CMS Bundle (all entries, `total` = their number).

Either way the headers `X-LFH-Bundle-Count`, `X-LFH-Record-UUIDs` and
`X-LFH-Data-Record-Locations` name what connect stored. It is a success only if every Bundle was
stored; an invalid Bundle (422) is never forwarded.

An empty search result is not forwarded: the answer is `ForwardedBundles` with `bundle_count` 0
(or the empty CMS Bundle), with `X-LFH-Bundle-Count: 0` and `X-LFH-Skipped` saying why.

`version` names the Blue Button API version the token belongs to (2 or 3, default
`BLUEBUTTON_CMS_API_VERSION`); `X-Blue-Button-Version` says which one the pull used.

Retry with the same `Idempotency-Key`: a finished pull is replayed, a partial one completed, and no
Bundle known to be stored is sent again. The whole pull has one deadline,
`BLUEBUTTON_PULL_TIMEOUT_SECONDS` (504)."""


@router.get(
    "/bluebutton/fhir",
    tags=["bluebutton"],
    summary="Pull from Blue Button and store in LinuxForHealth connect",
    description=FHIR_DOC,
    response_class=Response,
    responses={
        200: {
            "description": "Stored in connect",
            "headers": {
                VERSION_HEADER: {
                    "description": "The Blue Button API version of the pull (2 or 3)",
                    "schema": {"type": "string"},
                }
            },
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/LfhEnvelope"},
                            {"$ref": "#/components/schemas/ForwardedBundles"},
                        ]
                    }
                },
                "application/fhir+json": {"schema": {"type": "object", "description": "FHIR R4 Bundle"}},
            },
        },
        **outcome_responses(400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504),
    },
)
async def fetch_fhir(
    request: Request,
    query: FhirQueryDep,
    token: BearerTokenDep,
    transfer: IdempotentDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=HEADER_DOC)] = None,
) -> Response:
    answer = await transfer(idempotency_key, query, token, caller_gone=lambda: _disconnected(request))
    version = {VERSION_HEADER: str(query.version)}
    return StreamingResponse(
        _send(answer.parts),
        media_type=answer.media_type,
        headers={**answer.headers, **version, "Content-Length": str(answer.length)},
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (ASGI `http.disconnect`); a GET has no body to lose."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _send(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


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
        sync_routes.require_sync(request)
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
        sync_routes.require_sync(request)  # before the single-use code is spent
    try:
        tokens = await oauth.exchange_code(code, authorization.verifier, authorization.version)
    except CmsError as e:
        e.extra_issues.append(STATE_SPENT)  # the state is gone: retrying this callback cannot work
        raise
    if authorization.sync:
        return await sync_routes.enrolled(request, tokens, html=_wants_html(request))
    if _wants_html(request):
        html, headers = callback_page(tokens)
        return HTMLResponse(html, headers=headers)
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
