"""One run of `sync_grant`: refresh, pull since the watermark, validate what is new, forward, record.

1. The access token is refreshed when it expires within `BLUEBUTTON_SYNC_REFRESH_MARGIN_SECONDS`;
   the rotated refresh token is committed before the new access token is used (CMS refresh
   tokens are single-use; the job lock keeps two runs of a grant from refreshing at once).
2. The granted types are pulled at once (a run waits for one CMS round trip, not one per type)
   with the product's CMS client (paging, same-origin, retries), narrowed by
   `_lastUpdated=ge<watermark>` after the first complete run.
3. Entries the ledger already holds unchanged are dropped before validation; new and changed
   ones are validated by the product's workers; an invalid one is quarantined, never blocking the
   rest (the run is then `partial`).
4. Valid entries go to connect in connect-sized searchset Bundles; each Bundle's ledger rows are
   committed as soon as connect has stored it; watermarks advance only when the whole run is
   stored.

A worker killed mid-run leaves its ledger rows up to the last stored Bundle: the recovered run
finds them unchanged and sends only the rest. A Bundle whose POST was in flight at the kill may
be in connect without a ledger row, and is then sent again (connect cannot be asked).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import defaultdict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bluebutton.errors import (
    BlueButtonError,
    CmsForbiddenError,
    CmsRefreshRejectedError,
    CmsUnauthorizedError,
    Issue,
    TransientUpstreamError,
    ValidationUnavailableError,
)
from bluebutton.fhir.bundles import BundleHeader, split_entries
from bluebutton.pull.query import PAGE_SIZE
from bluebutton.sync import card, crossversion, grants, ledger, runs, v3
from bluebutton.sync.context import SyncContext
from bluebutton.sync.crypto import TokenKeyError
from bluebutton.sync.errors import GrantEndedError, TransientRunError
from bluebutton.sync.grants import SYNCING, Grant
from bluebutton.sync.ledger import Entry, EntryShapeError
from bluebutton.sync.runs import RunStatus

logger = logging.getLogger(__name__)

RESOURCE_TYPES = ("Patient", "Coverage", "ExplanationOfBenefit")
FIRST_BACKOFF_SECONDS = 60.0


def granted_types(scopes: list[str]) -> list[str]:
    """The types the grant's scopes allow (Patient only with a demographic scope); all if CMS
    reported no scope."""
    if not scopes:
        return list(RESOURCE_TYPES)
    return [t for t in RESOURCE_TYPES if any(s.startswith(f"patient/{t}.") for s in scopes)]


def failure_delay(failures: int, interval: int) -> float:
    """Exponential backoff with jitter after consecutive failures, capped at the sync interval."""
    capped = min(float(interval), FIRST_BACKOFF_SECONDS * 2 ** min(failures - 1, 30))
    return float(capped * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret


def _issue(
    text: str, code: str = "processing", severity: str = "error", path: str | None = None
) -> dict[str, Any]:
    return Issue(text, code, severity, (path,) if path else ()).as_fhir()


@dataclass
class Report:
    resources: dict[str, dict[str, int]] = field(default_factory=dict)
    issues: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, str] = field(default_factory=dict)
    invalid: int = 0
    lineage: crossversion.Lineage | None = None  # the grant between API versions (crossversion.py)

    def counts(self, kind: str) -> dict[str, int]:
        return self.resources.setdefault(
            kind, {"fetched": 0, "new": 0, "changed": 0, "unchanged": 0, "invalid": 0}
        )


class _Tokens:
    """The run's access token, renewed at most once more if CMS refuses it mid-run."""

    def __init__(self, ctx: SyncContext, grant: Grant) -> None:
        self.ctx = ctx
        self.grant = grant
        self.current = ""
        self.refreshed = False
        self.notes: list[dict[str, Any]] = []  # for the run's report (a merged beneficiary)
        self._renewing = asyncio.Lock()  # the types pull at once; a 401 on two renews once

    async def renew_after(self, refused: str) -> str:
        """Renew after CMS refused `refused`, unless another type's pull already did."""
        async with self._renewing:
            if self.current != refused:
                return self.current
            return await self.renew()

    async def first(self) -> str:
        ctx, grant = self.ctx, self.grant
        now = datetime.now(UTC)
        if grant.access_grant_expiration is not None and grant.access_grant_expiration <= now:
            raise GrantEndedError(
                "expired",
                Issue(
                    "The beneficiary's data-access grant ended "
                    f"({grant.access_grant_expiration.isoformat()}); they must authorize again "
                    "(GET /bluebutton/authorize?sync=true).",
                    "expired",
                ),
            )
        margin = timedelta(seconds=ctx.settings.sync_refresh_margin_seconds)
        if grant.access_token_ct and grant.access_expires_at and grant.access_expires_at - now > margin:
            self.current = ctx.cipher.decrypt(grant.access_token_ct, grant.id)
            return self.current
        return await self.renew()

    async def renew(self) -> str:
        ctx, grant = self.ctx, self.grant
        if self.refreshed:
            raise TransientRunError("Blue Button refused a freshly refreshed access token")
        self.refreshed = True
        if grant.refresh_token_ct is None:
            raise GrantEndedError(
                "expired",
                Issue(
                    "The access token expired and the grant has no refresh token (a one-time "
                    "grant); the beneficiary must authorize again.",
                    "expired",
                ),
            )
        refresh_token = ctx.cipher.decrypt(grant.refresh_token_ct, grant.id)
        try:
            tokens = await ctx.oauth.refresh(refresh_token, grant.api_version)
        except CmsRefreshRejectedError as e:
            detail = (e.detail or "").lower()
            if "timed out" in detail or "expired" in detail:
                state, what = "expired", "the beneficiary's data-access grant has ended"
            else:
                state, what = (
                    "revoked",
                    "the refresh token was refused (the beneficiary disconnected the app)",
                )
            raise GrantEndedError(
                state,
                Issue(
                    f"Blue Button refused the refresh (HTTP {e.upstream_status}): {what}; they must "
                    "authorize again (GET /bluebutton/authorize?sync=true).",
                    "expired" if state == "expired" else "security",
                ),
            ) from e
        # Committed before first use: the old refresh token no longer works.
        await grants.store_tokens(ctx.pool, ctx.cipher, grant.id, tokens)
        if tokens.patient and tokens.patient != grant.patient:
            self.notes.append(await v3.follow_merge(ctx.pool, grant.id, grant.patient, tokens.patient))
        self.current = tokens.access_token
        return self.current


async def run_grant(ctx: SyncContext, grant_id: uuid.UUID, job_id: int) -> str:
    """Run once; returns the run's status. Raises `TransientRunError` for procrastinate to retry."""
    started = time.perf_counter()
    run_id = await runs.start(ctx.pool, grant_id, job_id)
    report = Report()
    grant = await grants.get(ctx.pool, grant_id)
    if grant is None or grant.state not in SYNCING:
        state = grant.state if grant else "gone"
        report.issues.append(_issue(f"the grant is {state}: nothing pulled", "business-rule"))
        await runs.finish(ctx.pool, run_id, "failed", {}, report.issues)
        return "failed"
    try:
        tokens = _Tokens(ctx, grant)
        await tokens.first()
        report.lineage = await crossversion.Lineage.load(ctx.pool, grant.id, grant.api_version, grant.scopes)
        marks = await ledger.watermarks(ctx.pool, grant_id) if report.lineage.known else {}
        await _pull_types(ctx, grant, marks, tokens, run_id, report)
        report.issues += tokens.notes
    except GrantEndedError as e:
        await grants.end(ctx.pool, grant_id, e.state)  # type: ignore[arg-type]
        report.issues.append(e.issue.as_fhir())
        await runs.finish(ctx.pool, run_id, "failed", report.resources, report.issues)
        logger.info("sync run %d of grant %s: grant %s", run_id, grant_id, e.state)
        return "failed"
    except Exception as e:
        await _record_failure(ctx, grant_id, run_id, report, e)
        if _transient(e):
            raise TransientRunError(f"{type(e).__name__}: {_safe_text(e)}") from e
        if isinstance(e, BlueButtonError | TokenKeyError):
            return "failed"
        raise
    await ledger.advance(ctx.pool, grant_id, report.marks)
    status: RunStatus = "partial" if report.invalid else "succeeded"
    await runs.finish(ctx.pool, run_id, status, report.resources, report.issues)
    next_at = datetime.now(UTC) + timedelta(seconds=ctx.settings.sync_interval_seconds)
    await grants.succeeded(ctx.pool, grant_id, next_at)
    logger.info(
        "sync run %d of grant %s: %s in %.2fs %s",
        run_id,
        grant_id,
        status,
        time.perf_counter() - started,
        {k: v for k, v in report.resources.items()},
    )
    return status


def _transient(e: BaseException) -> bool:
    if isinstance(e, TransientRunError | ValidationUnavailableError | BrokenProcessPool):
        return True
    return isinstance(e, TransientUpstreamError)


def _safe_text(e: BaseException) -> str:
    """Our own error messages are written without tokens or payload; anything else is named only."""
    if isinstance(e, BlueButtonError | TransientRunError | TokenKeyError):
        return str(e)
    return f"internal error ({type(e).__name__}); see the worker's log"


async def _record_failure(
    ctx: SyncContext, grant_id: uuid.UUID, run_id: int, report: Report, e: Exception
) -> None:
    if isinstance(e, BlueButtonError):
        report.issues += [i.as_fhir() for i in e.issues()]
    else:
        report.issues.append(_issue(_safe_text(e), "exception"))
    report.issues.append(
        _issue(
            "The run failed; what it stored is recorded and will not be sent again. It is retried "
            "with backoff.",
            "incomplete",
            "information",
        )
    )
    try:
        await runs.finish(ctx.pool, run_id, "failed", report.resources, report.issues)
        interval = ctx.settings.sync_interval_seconds
        await grants.failed(ctx.pool, grant_id, lambda n: failure_delay(n, interval))
    finally:
        logger.warning("sync run %d of grant %s failed: %s", run_id, grant_id, type(e).__name__)


async def _fetch(
    ctx: SyncContext, kind: str, params: list[tuple[str, str]], tokens: _Tokens
) -> tuple[list[bytes], str | None]:
    """Every page's entries and the first page's meta.lastUpdated; one renewal on a 401."""
    while True:
        raw: list[bytes] = []
        mark: str | None = None
        first = True
        token = tokens.current
        try:
            async for page in ctx.cms.iter_pages(kind, params, token, tokens.grant.api_version):
                if first:
                    mark, first = page.last_updated, False
                raw += page.entries
            return raw, mark
        except CmsUnauthorizedError:
            await tokens.renew_after(token)


async def _pull_types(
    ctx: SyncContext, grant: Grant, marks: dict[str, str], tokens: _Tokens, run_id: int, report: Report
) -> None:
    """Every granted type at once: a run waits for one CMS round trip, not one per type. The
    types share nothing but the token and the report; the first failure stops the others."""
    kinds = granted_types(grant.scopes)
    pulls = [
        asyncio.create_task(_pull_type(ctx, grant, kind, marks.get(kind), tokens, run_id, report))
        for kind in kinds
    ]
    if card.wanted(grant):  # v3: the digital insurance card too (card.py)
        kinds = [*kinds, card.CARD]
        pulls.append(asyncio.create_task(card.pull(ctx, grant, tokens, run_id, report)))
    try:
        await asyncio.gather(*pulls)
    except BaseException:
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        raise
    finally:  # the report lists the types in this order, whichever ended first
        report.resources = {k: report.resources[k] for k in kinds if k in report.resources}


async def _pull_type(
    ctx: SyncContext,
    grant: Grant,
    kind: str,
    since: str | None,
    tokens: _Tokens,
    run_id: int,
    report: Report,
) -> None:
    params = [("_count", str(PAGE_SIZE))]
    if since:
        params.append(("_lastUpdated", f"ge{since}"))
    try:
        raw, mark = await _fetch(ctx, kind, params, tokens)
        if kind == "Coverage" and report.lineage is not None:
            report.issues += await report.lineage.read_coverage(ctx, raw)
    except CmsForbiddenError:
        if report.lineage is not None:
            report.lineage.unread()
        report.issues.append(
            _issue(
                f"{kind}: Blue Button answered 403 (the scope for it was withheld); not pulled",
                "forbidden",
                "warning",
            )
        )
        return
    counts = report.counts(kind)
    counts["fetched"] = len(raw)
    if mark:
        report.marks[kind] = mark  # kept only if the whole run is stored (run_grant)
    if not raw:
        return  # nothing since the watermark: no ledger lookup either
    entries: dict[str, Entry] = {}
    for index, item in enumerate(raw):
        try:
            entry = ledger.read_entry(item)
        except EntryShapeError as e:
            counts["invalid"] += 1
            report.invalid += 1
            report.issues.append(_issue(f"{kind} entry {index}: {e}; not forwarded", "structure"))
            continue
        entries[entry.resource_id] = entry  # a resource seen twice (the search grew): the last wins
    classified = await ledger.classify(ctx.pool, grant.id, kind, list(entries.values()))
    if kind == "ExplanationOfBenefit":
        assert report.lineage is not None
        classified = await crossversion.settle(ctx, grant.id, classified, report.lineage, counts, run_id)
    candidates: list[Entry] = []
    for entry, verdict in classified:
        counts[verdict] += 1
        if verdict != "unchanged":
            candidates.append(entry)
    valid, held = await _validate(ctx, kind, candidates)
    for entry, issues in held:
        counts["invalid"] += 1
        report.invalid += 1
        for issue in issues:
            report.issues.append(
                {**issue, "diagnostics": f"{kind}/{entry.resource_id} quarantined: {issue['diagnostics']}"}
            )
    await ledger.quarantine(ctx.pool, grant.id, kind, held, run_id)
    await _forward(ctx, grant.id, kind, valid, run_id)


async def _validate(
    ctx: SyncContext, kind: str, candidates: list[Entry]
) -> tuple[list[Entry], list[tuple[Entry, list[dict[str, Any]]]]]:
    """Split new and changed entries into valid ones and quarantined ones with their issues."""
    if not candidates:
        return [], []
    limit = ctx.settings.lfh_max_bundle_bytes
    overhead = BundleHeader.fresh(0).overhead()
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for index, entry in enumerate(candidates):
        if overhead + len(entry.raw) > limit:
            found[index].append(
                _issue(
                    f"the entry is {len(entry.raw)} bytes, more than one connect record holds "
                    "(BLUEBUTTON_LFH_MAX_BUNDLE_BYTES)",
                    "too-costly",
                )
            )
    try:
        problems = await ctx.validator.validate([e.raw for e in candidates])
    except BrokenProcessPool as e:
        raise ValidationUnavailableError("a validation worker stopped during the run") from e
    for index, _ref, path, message in problems:
        element = path.replace(f"Bundle.entry[{index}].resource", kind, 1).replace(
            f"Bundle.entry[{index}]", "entry", 1
        )
        found[index].append(_issue(f"{element}: {message}", "structure", path=element))
    valid = [e for i, e in enumerate(candidates) if i not in found]
    held = [(candidates[i], issues) for i, issues in sorted(found.items())]
    return valid, held


async def _forward(ctx: SyncContext, grant_id: uuid.UUID, kind: str, valid: list[Entry], run_id: int) -> None:
    if not valid:
        return
    header = BundleHeader.fresh(total=len(valid))
    pieces = split_entries([e.raw for e in valid], ctx.settings.lfh_max_bundle_bytes, header)
    for piece in pieces:
        record = await ctx.connect.post_bundle(piece.body)
        stored = valid[piece.start : piece.stop]
        async with ctx.pool.connection() as connection, connection.transaction():
            await ledger.record_stored(
                connection, grant_id, kind, stored, record.uuid, record.location, run_id
            )
            if kind == "ExplanationOfBenefit":
                await crossversion.record_stored(connection, ctx, grant_id, stored)
            await runs.add_bundle(
                connection,
                run_id,
                {
                    "uuid": record.uuid,
                    "data_record_location": record.location,
                    "entry_count": len(stored),
                    "resource_type": kind,
                },
            )
