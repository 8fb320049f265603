"""Response shapes of the operator API (/bluebutton/grants, /bluebutton/runs) and of the sync=true
callback, for the OpenAPI document and to hold the answers to it (FastAPI validates each one)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from bluebutton.sync.grants import GrantState
from bluebutton.sync.runs import RunStatus


class RunIssue(BaseModel):
    """An OperationOutcome issue of a run or a quarantined entry."""

    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(description="FHIR issue-type code, e.g. structure, processing, login")
    diagnostics: str = Field(description="What happened, naming the entry; never a value from it")
    expression: list[str] | None = Field(default=None, description="Element paths, when known")

    @model_serializer(mode="wrap")
    def _absent_not_null(self, handler: SerializerFunctionWrapHandler) -> Any:
        # FHIR JSON has no nulls: an issue without paths has no `expression`.
        return {k: v for k, v in handler(self).items() if v is not None}


class ResourceCounts(BaseModel):
    fetched: int = Field(description="Entries CMS sent")
    new: int = Field(description="Not in the ledger: forwarded")
    changed: int = Field(description="In the ledger with other content: forwarded")
    unchanged: int = Field(description="As the ledger holds them: neither validated nor forwarded")
    invalid: int = Field(description="Quarantined: not forwarded")
    held_under_v2: int = Field(
        default=0,
        description="v3 claims the ledger proves stored by the v2 grant this one took over: not sent",
    )
    possibly_held_under_v2: int = Field(
        default=0, description="v3 claims not provably stored under v2 (stored now; may repeat one of them)"
    )


class StoredBundle(BaseModel):
    uuid: str = Field(description="connect's record uuid")
    data_record_location: str
    entry_count: int
    resource_type: str


class RunInfo(BaseModel):
    id: int
    grant_id: uuid.UUID
    status: RunStatus = Field(
        description="queued, running, succeeded, partial (some entries quarantined, every valid one "
        "stored) or failed (nothing lost; retried later)"
    )
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    resources: dict[str, ResourceCounts] = Field(description="Counts per resource type")
    bundles: list[StoredBundle] = Field(description="What connect stored, in order")
    issues: list[RunIssue]


class QuarantinedEntry(BaseModel):
    resource_type: str
    id: str
    issues: list[RunIssue] = Field(description="Why it is held: element paths and messages")


class LastFailure(BaseModel):
    at: datetime | None = Field(description="When the failed run ended")
    reason: str = Field(description="Its first error, as the run's issues say")


class GrantInfo(BaseModel):
    id: uuid.UUID
    patient: str | None
    api_version: int = Field(description="The Blue Button API version the grant reads (2 or 3)")
    may_be_withheld: list[str] = Field(
        default_factory=list,
        description="What CMS may leave out of this grant's results without notice (v3 consent rules); "
        "a claim that disappears is never taken for deleted",
    )
    state: GrantState = Field(
        description="active, failing (transient failures, retried with backoff), expired (the data-access "
        "grant ended), revoked (CMS refused the refresh token), disconnected (by the operator) or "
        "migrated (the beneficiary consented on Blue Button v3; their v3 grant took over)"
    )
    scopes: list[str]
    access_grant_expiration: datetime | None = Field(description="When CMS ends the data-access grant")
    created_at: datetime
    next_sync_at: datetime | None = Field(description="None unless active or failing")
    last_run: RunInfo | None = Field(description="The last finished run")
    quarantined: list[QuarantinedEntry]
    state_reason: str | None = Field(
        description="Why the grant is in its state: an ended grant's cause, or a failing grant's "
        "failures in a row and latest error; None when active"
    )
    last_succeeded_at: datetime | None = Field(description="When the last succeeded or partial run ended")
    last_failure: LastFailure | None = Field(description="The grant's last failed run, if any")
    claims_held: int = Field(description="ExplanationOfBenefit resources connect holds for the grant")
    records_held: int = Field(description="Resources of every type connect holds for the grant")


NEXT_CURSOR = "Pass as `cursor` for the next page; null on the last page"


class GrantList(BaseModel):
    grants: list[GrantInfo] = Field(description="In enrolment order (oldest first)")
    next_cursor: str | None = Field(description=NEXT_CURSOR)
    limit: int = Field(description="The page size asked for")
    total: int = Field(description="Grants matching the filters (state and patient), on every page")
    counts: dict[GrantState, int] = Field(
        description="Grants in each state within the patient filter (the state filter aside)"
    )


class RunList(BaseModel):
    runs: list[RunInfo] = Field(description="Newest first")
    next_cursor: str | None = Field(description=NEXT_CURSOR)
    limit: int
    total: int = Field(description="The grant's runs")


class RunQueued(BaseModel):
    run_id: int = Field(description="The new run, or the one already waiting")


class StoredRecord(BaseModel):
    resource_type: str
    id: str
    uuid: str = Field(description="connect's record uuid")
    data_record_location: str
    stored_at: datetime


class RecordList(BaseModel):
    records: list[StoredRecord] = Field(
        description="Where connect holds the latest version of each, by resource type and id"
    )
    next_cursor: str | None = Field(description=NEXT_CURSOR)
    limit: int
    total: int = Field(description="The grant's records")


class Enrolment(BaseModel):
    """The callback's JSON answer for sync=true: never the refresh token (the service owns it)."""

    grant_id: uuid.UUID
    run_id: int = Field(description="The first full run, queued at once")
    patient: str | None
    api_version: int = Field(description="The Blue Button API version the grant reads (2 or 3)")
    scope: list[str]
    access_grant_expiration: str | None = Field(description="As CMS sent it (empty for research apps)")
    access_token: str
    expires_in: int
