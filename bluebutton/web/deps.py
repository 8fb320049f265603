"""Request dependencies, as Annotated aliases: the lifespan state (the composition root's
`Resources`, the transfer, grant keeping), the caller's bearer token, and the operator key.

Routes and the console read state only through here; routers never import each other."""

from __future__ import annotations

import hmac
import re
from typing import Annotated, cast

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.cms.pending import PendingStore
from bluebutton.errors import MissingTokenError, NotConfiguredError
from bluebutton.fhir.validator import Validator
from bluebutton.metrics import Metrics
from bluebutton.pull.idempotency import IdempotentTransfer
from bluebutton.pull.query import FhirQuery, repeated_single_values
from bluebutton.resources import Resources
from bluebutton.settings import Settings
from bluebutton.sync.errors import AdminKeyError
from bluebutton.sync.service import SyncService, sync_off
from bluebutton.web.sessions import ConsoleSessions
from bluebutton.web.state import State
from bluebutton.web.throttle import admin_key_guard

# RFC 6750 §2.1 b64token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN = 4096

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BlueButtonToken",
    description="A Blue Button 2.0 access token (from /bluebutton/authorize or the CMS sandbox).",
)


def app_state(request: Request) -> State:
    """The lifespan's state; Starlette hands each request a shallow copy of what it yielded."""
    return cast(State, request.scope["state"])


def get_resources(request: Request) -> Resources:
    return app_state(request)["resources"]


def get_settings(request: Request) -> Settings:
    return get_resources(request).settings


def get_validator(request: Request) -> Validator:
    return get_resources(request).validator


def get_oauth(request: Request) -> OAuthClient:
    return get_resources(request).oauth


def get_pending(request: Request) -> PendingStore:
    return get_resources(request).pending


def get_cms(request: Request) -> CmsClient:
    return get_resources(request).cms


def get_metrics(request: Request) -> Metrics:
    return get_resources(request).metrics


def get_console_sessions(request: Request) -> ConsoleSessions:
    return app_state(request)["console_sessions"]


def get_idempotent(request: Request) -> IdempotentTransfer:
    return app_state(request)["idempotent"]


def get_sync(request: Request) -> SyncService | None:
    """Grant keeping, or None when it is off (no `BLUEBUTTON_DATABASE_URL`)."""
    return app_state(request)["sync"]


def require_sync(request: Request) -> SyncService:
    """Grant keeping, or a 503 naming the settings that turn it on."""
    service = get_sync(request)
    if service is None:
        raise sync_off()
    return service


api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="AdminApiKey",
    description="The operator key, BLUEBUTTON_ADMIN_API_KEY (for /bluebutton/grants and /bluebutton/runs).",
)


def check_admin_key(request: Request, key: str | None, *, off: str) -> None:
    """The operator key, compared in constant time, wrong keys throttled per client (429 past a
    small budget); `off` says what to set when there is none."""
    expected = get_settings(request).admin_api_key
    if expected is None:
        raise NotConfiguredError(off)
    if not key:
        raise AdminKeyError("No X-API-Key header: send 'X-API-Key: <BLUEBUTTON_ADMIN_API_KEY>'.")
    with admin_key_guard(request, key):
        if not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
            raise AdminKeyError("The X-API-Key is not the operator key (BLUEBUTTON_ADMIN_API_KEY).")


def admin(request: Request, key: Annotated[str | None, Depends(api_key)]) -> SyncService:
    """The operator API's guard: grant keeping on (else 503), then the operator key."""
    service = require_sync(request)
    check_admin_key(
        request,
        key,
        off="The operator API is off: set BLUEBUTTON_ADMIN_API_KEY (at least 32 characters).",
    )
    return service


def bearer_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's Blue Button access token, passed on to CMS unchanged."""
    if credentials is None:
        if request.headers.get("Authorization"):
            raise MissingTokenError(
                "The Authorization header is not 'Bearer <token>'. Send the Blue Button access "
                "token as 'Authorization: Bearer <token>'."
            )
        raise MissingTokenError(
            "No Blue Button access token. Send 'Authorization: Bearer <token>' (in Swagger UI: "
            "the Authorize button); get a token from GET /bluebutton/authorize."
        )
    token = credentials.credentials
    if len(token) > _MAX_TOKEN or not _B64TOKEN.fullmatch(token):
        raise MissingTokenError(
            "The bearer token is malformed (RFC 6750 allows letters, digits and -._~+/ "
            "followed by optional '='). Paste the access_token value exactly."
        )
    return token


SettingsDep = Annotated[Settings, Depends(get_settings)]
ValidatorDep = Annotated[Validator, Depends(get_validator)]
BearerTokenDep = Annotated[str, Depends(bearer_token)]
OAuthDep = Annotated[OAuthClient, Depends(get_oauth)]
PendingDep = Annotated[PendingStore, Depends(get_pending)]
IdempotentDep = Annotated[IdempotentTransfer, Depends(get_idempotent)]
ConsoleSessionsDep = Annotated[ConsoleSessions, Depends(get_console_sessions)]
CmsDep = Annotated[CmsClient, Depends(get_cms)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SyncDep = Annotated[SyncService | None, Depends(get_sync)]
AdminDep = Annotated[SyncService, Depends(admin)]
ApiKeyDep = Annotated[str | None, Depends(api_key)]


def get_fhir_query(request: Request, query: Annotated[FhirQuery, Query()]) -> FhirQuery:
    """The query, refusing a single-valued parameter given twice
    (`resource_type=Patient&resource_type=Coverage`) rather than silently running the last one;
    without `version`, the configured one."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = repeated_single_values(names)
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", name),
                    "msg": f"given {names.count(name)} times; it takes one value",
                    "input": None,
                }
                for name in repeated
            ]
        )
    if query.version is None:
        query = query.model_copy(update={"version": get_settings(request).cms_api_version})
    return query


FhirQueryDep = Annotated[FhirQuery, Depends(get_fhir_query)]
