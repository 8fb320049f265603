"""Paged listings for the operator API and the console: grants (with what an operator asks first),
a grant's runs and its records. Both read here, so they show the same data from the same queries.

A page costs a fixed number of queries, whatever its size: the grants themselves (keyset on
enrolment order, `keyset.py`), then per page, not per row, their last runs, quarantine, ledger
counts and run outcomes; and the counts by state for the same patient search.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from bluebutton.sync import grants, ledger, runs
from bluebutton.sync.grants import SYNCING, Grant, GrantState
from bluebutton.sync.keyset import CursorError, decode, encode

CLAIMS = "ExplanationOfBenefit"
PATIENT_SEARCH = r"^[^\x00-\x1f\x7f]+$"  # a patient-id prefix: no control characters (PostgreSQL refuses NUL)


@dataclass(frozen=True)
class Page:
    """One page: its items, the cursor of the next (None on the last), and totals when known."""

    items: list[dict[str, Any]]
    next_cursor: str | None
    limit: int
    total: int


def _instant(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _first_error(issues: list[dict[str, Any]] | None) -> str | None:
    for issue in issues or []:
        if issue.get("severity") in ("error", "fatal"):
            return str(issue.get("diagnostics", "")) or None
    return None


def _state_reason(grant: Grant, last_failure: str | None) -> str | None:
    """Why the grant is in its state, when that needs saying: an ended grant's cause, or a failing
    grant's latest error (first: what an operator reads) and how many attempts in a row failed."""
    if grant.state == "failing":
        count = grant.consecutive_failures
        tries = f"{count} failure{'s' if count != 1 else ''} in a row, retried with backoff"
        return f"{last_failure} ({tries})" if last_failure else tries
    return grants.ended_reason(grant.state)


# What a v3 consent can hide from the app without any signal in the token, scopes or userinfo
# (bb2-v3.md §5): a claim missing from a later result is not a deletion.
WITHHELD_ON_V3 = [
    "substance-use (42 CFR Part 2) claims: the v3 consent's box is unticked by default",
    "every claim but Part D (DDPS) when CMS made the app Part-D-only",
]


async def describe(pool: AsyncConnectionPool, found: list[Grant]) -> list[dict[str, Any]]:
    """The grants as the API shows them: four queries for the whole list, none per grant."""
    ids = [g.id for g in found]
    last = await runs.last_finished(pool, ids)
    held = await ledger.quarantined_of(pool, ids)
    counts = await ledger.held_counts(pool, ids)
    outcomes = await runs.outcomes(pool, ids)
    described = []
    for grant in found:
        outcome = outcomes.get(grant.id, {})
        failure = _first_error(outcome.get("last_failure_issues"))
        last_run = last.get(grant.id)
        described.append(
            {
                "id": str(grant.id),
                "patient": grant.patient,
                "api_version": grant.api_version,
                "may_be_withheld": WITHHELD_ON_V3 if grant.api_version == 3 else [],
                "state": grant.state,
                "state_reason": _state_reason(grant, failure),
                "scopes": grant.scopes,
                "access_grant_expiration": _instant(grant.access_grant_expiration),
                "created_at": _instant(grant.created_at),
                "next_sync_at": _instant(grant.next_sync_at) if grant.state in SYNCING else None,
                "last_run": runs.as_json(last_run) if last_run else None,
                "last_succeeded_at": _instant(outcome.get("last_succeeded_at")),
                "last_failure": (
                    {"at": _instant(outcome.get("last_failed_at")), "reason": failure} if failure else None
                ),
                "claims_held": counts[grant.id].get(CLAIMS, 0),
                "records_held": sum(counts[grant.id].values()),
                "quarantined": held[grant.id],
            }
        )
    return described


def _grant_key(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, grant_id = decode(cursor, str, str)
    try:
        return datetime.fromisoformat(created), uuid.UUID(grant_id)
    except ValueError as e:
        raise CursorError() from e


async def grants_page(
    pool: AsyncConnectionPool,
    *,
    state: GrantState | None,
    patient: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Page, dict[GrantState, int]]:
    """A page of grants in enrolment order, and how many grants each state has (within `patient`,
    a prefix of the patient id); `total` counts the grants matching both filters."""
    after = _grant_key(cursor) if cursor else None
    found = await grants.page(pool, state=state, patient=patient, after=after, limit=limit + 1)
    counts = await grants.count_by_state(pool, patient)
    shown = found[:limit]
    more = len(found) > limit
    next_cursor = encode(shown[-1].created_at.isoformat(), str(shown[-1].id)) if more else None
    total = counts[state] if state is not None else sum(counts.values())
    return Page(await describe(pool, shown), next_cursor, limit, total), counts


async def runs_page(pool: AsyncConnectionPool, grant_id: uuid.UUID, limit: int, cursor: str | None) -> Page:
    """A page of the grant's runs, newest first."""
    before = decode(cursor, int)[0] if cursor else None
    found = await runs.page_of_grant(pool, grant_id, before, limit + 1)
    shown = found[:limit]
    next_cursor = encode(shown[-1]["id"]) if len(found) > limit else None
    total = await runs.count_of_grant(pool, grant_id)
    return Page([runs.as_json(r) for r in shown], next_cursor, limit, total)


async def records_page(
    pool: AsyncConnectionPool, grant_id: uuid.UUID, limit: int, cursor: str | None
) -> Page:
    """A page of where connect holds the grant's resources, by resource type and id."""
    after: tuple[str, str] | None = decode(cursor, str, str) if cursor else None
    found = await ledger.records_page(pool, grant_id, after, limit + 1)
    shown = found[:limit]
    more = len(found) > limit
    next_cursor = encode(shown[-1]["resource_type"], shown[-1]["id"]) if more else None
    total = sum((await ledger.held_counts(pool, [grant_id]))[grant_id].values())
    return Page(shown, next_cursor, limit, total)
