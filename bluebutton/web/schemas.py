"""Request and response shapes of the HTTP API, for validation and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bluebutton.cms.versions import ApiVersion
from bluebutton.connect.client import LfhEnvelope
from bluebutton.fhir.bundles import FHIR_JSON


class OutcomeIssue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(description="FHIR issue-type code, e.g. invalid, login, throttled")
    diagnostics: str = Field(description="What was wrong and what to do")
    expression: list[str] | None = Field(
        default=None, description="Where: a query parameter or an element path"
    )


class OperationOutcome(BaseModel):
    """Every error of this API, FastAPI's own 422s included."""

    resourceType: Literal["OperationOutcome"] = "OperationOutcome"
    issue: list[OutcomeIssue]


class ForwardedBundle(BaseModel):
    first_entry: int = Field(description="Index in the merged Bundle of this piece's first entry")
    entry_count: int
    envelope: LfhEnvelope = Field(description="connect's envelope for this piece, unchanged")


class ForwardedBundles(BaseModel):
    """The answer when the pull needed several connect-sized Bundles, in order."""

    bundle_count: int
    entry_count: int
    bundles: list[ForwardedBundle]


class GrantKeepingHealth(BaseModel):
    database: Literal["reachable", "unreachable"]
    database_unreachable_seconds: float | None = None
    workers: int | None = Field(description="Workers (any process) whose heartbeat is fresh")
    embedded_worker: Literal["running", "restarting"] | None = None
    oldest_queued_run_seconds: float | None = Field(
        description="How long the oldest run due now has waited for a worker"
    )
    pending_writes: int = Field(description="Writes this process keeps until the database answers")
    progressing: bool = Field(description="Whether grant keeping can progress now")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    validation: Literal["fast", "standard"] = Field(
        description="Whether the validation workers run with the speedup patches or without"
    )
    grant_keeping: GrantKeepingHealth | None = Field(
        default=None, description="Grant keeping's state (absent when it is off); never fails /health"
    )


class AuthorizeLink(BaseModel):
    authorize_url: str
    expires_in: int = Field(description="Seconds this authorization stays open (its state expires)")


_VERSION_DOC = "The Blue Button API version the token came from (2 or 3); default BLUEBUTTON_CMS_API_VERSION."


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=4096)
    api_version: ApiVersion | None = Field(default=None, description=_VERSION_DOC)


class RevokeRequest(BaseModel):
    token: str = Field(min_length=1, max_length=4096)
    api_version: ApiVersion | None = Field(default=None, description=_VERSION_DOC)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None
    token_type: str
    expires_in: int
    expires_at: str = Field(description="When the access token expires (UTC, computed)")
    scope: list[str]
    patient: str | None
    access_grant_expiration: str | None
    api_version: int = Field(description="The Blue Button API version the tokens belong to (2 or 3)")


class Userinfo(BaseModel):
    """CMS's `/v{n}/connect/userinfo` answer, passed on as CMS sent it (bb2-api.md §2.12)."""

    model_config = ConfigDict(extra="allow")

    sub: str | None = Field(default=None, description="The beneficiary's FHIR patient id")
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    iat: str | None = Field(default=None, description="When the user joined (ISO date and time)")
    patient: str | None = Field(default=None, description="The beneficiary's FHIR patient id")


def outcome_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each a FHIR OperationOutcome."""
    content = {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}
    return {code: {"description": "FHIR OperationOutcome", "content": content} for code in codes}
