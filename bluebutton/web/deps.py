"""Request dependencies: lifespan state and the caller's bearer token, as Annotated aliases."""

from __future__ import annotations

import re
from typing import Annotated, cast

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.cms.pending import PendingStore
from bluebutton.errors import MissingTokenError
from bluebutton.fhir.validator import Validator
from bluebutton.pull.idempotency import IdempotentTransfer
from bluebutton.pull.pipeline import Transfer
from bluebutton.pull.query import FhirQuery, repeated_single_values
from bluebutton.settings import Settings
from bluebutton.web.state import State

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


def get_settings(request: Request) -> Settings:
    return app_state(request)["settings"]


def get_validator(request: Request) -> Validator:
    return app_state(request)["validator"]


def get_oauth(request: Request) -> OAuthClient:
    return app_state(request)["oauth"]


def get_pending(request: Request) -> PendingStore:
    return app_state(request)["pending"]


def get_cms(request: Request) -> CmsClient:
    return app_state(request)["cms"]


def get_transfer(request: Request) -> Transfer:
    return app_state(request)["transfer"]


def get_idempotent(request: Request) -> IdempotentTransfer:
    return app_state(request)["idempotent"]


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
TransferDep = Annotated[Transfer, Depends(get_transfer)]
IdempotentDep = Annotated[IdempotentTransfer, Depends(get_idempotent)]
CmsDep = Annotated[CmsClient, Depends(get_cms)]


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
