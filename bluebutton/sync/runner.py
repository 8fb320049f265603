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
finds them unchanged and sends only the rest. A Bundle whose POST got no answer (the worker was
killed, connect timed out or reset the connection) may be in connect without a ledger row, and is
then sent again (connect cannot be asked): at most that one Bundle per fault.

When the database goes mid-run, what must not be lost is handed to the process's journal
(`journal.py`): the ledger rows of a Bundle connect stored (written when the database answers,
so it is never sent again), a rotated refresh token, and the end of the run (`failed`, "the
database was unreachable", its grant queued again). connect's 200 without a location stores the
record's uuid with the location unknown: it is stored, so it is not sent again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bluebutton.errors import (
    BlueButtonError,
    CmsForbiddenError,
    CmsRefreshRejectedError,
    CmsUnauthorizedError,
    ConnectError,
    ConnectLocationUnknownError,
    ConnectTimeoutError,
    Issue,
    TransientUpstreamError,
    ValidationUnavailableError,
)
from bluebutton.fhir.bundles import BundleHeader, split_entries
from bluebutton.pull.query import PAGE_SIZE
from bluebutton.sync import card, crossversion, grants, ledger, runs, v3
from bluebutton.sync.context import SyncContext
from bluebutton.sync.crypto import TokenKeyError
from bluebutton.sync.database import ping, unreachable
from bluebutton.sync.errors import GrantEndedError, TransientRunError
from bluebutton.sync.grants import SYNCING, Grant
from bluebutton.sync.journal import Pending
from bluebutton.sync.ledger import Entry, EntryShapeError
from bluebutton.sync.runs import RunStatus

if TYPE_CHECKING:
    from bluebutton.sync.keeping import Keeping

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
    location_unknown: int = 0
    lineage: crossversion.Lineage | None = None  # the grant between API versions (crossversion.py)

    def counts(self, kind: str) -> dict[str, int]:
        return self.resources.setdefault(
            kind, {"fetched": 0, "new": 0, "changed": 0, "unchanged": 0, "invalid": 0}
        )


class _Run:
    """What one run shares between its steps: the process's grant keeping, its ids, its report."""

    def __init__(self, keeping: Keeping, run_id: int, grant: Grant) -> None:
        self.keeping = keeping
        self.ctx: SyncContext = keeping.ctx
        self.run_id = run_id
        self.grant = grant
        self.report = Report()


class _Tokens:
    """The run's access token, renewed at most once more if CMS refuses it mid-run."""

    def __init__(self, keeping: Keeping, grant: Grant) -> None:
        self.keeping = keeping
        self.ctx = keeping.ctx
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
        # CMS rotates the refresh token and the old one dies: refresh only when the database has
        # just answered, so the new one can be written at once.
        await ping(ctx.pool)
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
        # Committed before first use: the old refresh token no longer works. If the database went
        # meanwhile, the journal writes it when it answers, even if this run is gone by then.
        sealed = grants.seal_tokens(ctx.cipher, grant.id, tokens)

        async def write(connection: Any) -> None:
            await grants.store_sealed(connection, grant.id, sealed)

        try:
            async with ctx.pool.connection() as connection:
                await write(connection)
        except Exception as e:
            if not unreachable(e):
                raise
            self.keeping.watch.went(e)
            kept = self.keeping.journal.keep(Pending(f"the rotated tokens of grant {grant.id}", write))
            await self.keeping.journal.written(kept)
        if tokens.patient and tokens.patient != grant.patient:
            self.notes.append(await v3.follow_merge(ctx.pool, grant.id, grant.patient, tokens.patient))
        self.current = tokens.access_token
        return self.current


async def run_grant(keeping: Keeping, run_id: int, job_id: int) -> str:
    """Run once; returns the run's status. A transient failure queues the next attempt."""
    ctx = keeping.ctx
    started = time.perf_counter()
    async with ctx.pool.connection() as connection, connection.transaction():
        grant_id = await runs.start(connection, run_id, job_id)
        grant = await grants.get_with(connection, grant_id) if grant_id else None
    if grant_id is None:
        logger.warning(
            "sync run %d is not waiting for job %d (ended meanwhile): nothing to do", run_id, job_id
        )
        return "skipped"
    if grant is None or grant.state not in SYNCING:
        state = grant.state if grant else "gone"
        async with ctx.pool.connection() as connection, connection.transaction():
            await runs.finish(
                connection,
                run_id,
                "failed",
                {},
                [_issue(f"the grant is {state}: nothing pulled", "business-rule")],
            )
        return "failed"
    run = _Run(keeping, run_id, grant)
    report = run.report
    try:
        tokens = _Tokens(keeping, grant)
        await tokens.first()
        report.lineage = await crossversion.Lineage.load(ctx.pool, grant.id, grant.api_version, grant.scopes)
        marks = await ledger.watermarks(ctx.pool, grant_id) if report.lineage.known else {}
        await _pull_types(run, marks, tokens)
        report.issues += tokens.notes
        status: RunStatus = "partial" if report.invalid else "succeeded"
        next_at = datetime.now(UTC) + timedelta(seconds=ctx.settings.sync_interval_seconds)
        async with ctx.pool.connection() as connection, connection.transaction():
            await ledger.advance(connection, grant_id, report.marks)
            await runs.finish(connection, run_id, status, report.resources, report.issues)
            await grants.succeeded(connection, grant_id, next_at)
    except GrantEndedError as e:
        report.issues.append(e.issue.as_fhir())
        async with ctx.pool.connection() as connection, connection.transaction():
            await grants.end_with(connection, grant_id, e.state)  # type: ignore[arg-type]
            await runs.finish(connection, run_id, "failed", report.resources, report.issues)
        logger.info("sync run %d of grant %s: grant %s", run_id, grant_id, e.state)
        return "failed"
    except Exception as e:
        if unreachable(e):
            keeping.watch.went(e)
            keeping.keep_unfinished(run_id)
            raise
        try:
            await _record_failure(run, e)
        except Exception as lost:
            if not unreachable(lost):
                raise
            keeping.watch.went(lost)
            keeping.keep_unfinished(run_id)
            raise
        if isinstance(e, BlueButtonError | TokenKeyError | TransientRunError | BrokenProcessPool):
            return "failed"
        raise
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


async def _record_failure(run: _Run, e: Exception) -> None:
    """End the run `failed`; the grant backs off, and a transient failure is tried again after
    BLUEBUTTON_SYNC_RETRY_WAIT_SECONDS (doubling) up to BLUEBUTTON_SYNC_RETRY_ATTEMPTS times."""
    ctx, report = run.ctx, run.report
    logger.warning("sync run %d of grant %s failed: %s", run.run_id, run.grant.id, type(e).__name__)
    if isinstance(e, BlueButtonError):
        report.issues += [i.as_fhir() for i in e.issues()]
    else:
        report.issues.append(_issue(_safe_text(e), "exception"))
    settings = ctx.settings
    async with ctx.pool.connection() as connection:
        row = await (
            await connection.execute("SELECT attempt FROM bluebutton_runs WHERE id = %s", (run.run_id,))
        ).fetchone()
    attempt = int(row[0]) if row else 1
    retry = _transient(e) and attempt <= settings.sync_retry_attempts
    wait = float(settings.sync_retry_wait_seconds * 2 ** (attempt - 1))
    then = f"It is tried again in {wait:g} s." if retry else "It is retried with backoff."
    report.issues.append(
        _issue(
            f"The run failed; what connect stored is recorded and will not be sent again. {then}",
            "incomplete",
            "information",
        )
    )
    interval = settings.sync_interval_seconds
    async with ctx.pool.connection() as connection, connection.transaction():
        await runs.finish(connection, run.run_id, "failed", report.resources, report.issues)
        await grants.failed(connection, run.grant.id, lambda n: failure_delay(n, interval))
        if retry:
            await runs.request(connection, run.grant.id, attempt=attempt + 1, delay=wait)


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


async def _pull_types(run: _Run, marks: dict[str, str], tokens: _Tokens) -> None:
    """Every granted type at once: a run waits for one CMS round trip, not one per type. The
    types share nothing but the token and the report; the first failure stops the others."""
    kinds = granted_types(run.grant.scopes)
    report = run.report
    pulls = [asyncio.create_task(_pull_type(run, kind, marks.get(kind), tokens)) for kind in kinds]
    if card.wanted(run.grant):  # v3: the digital insurance card too (card.py)
        kinds = [*kinds, card.CARD]

        async def send(body: bytes, stored: list[Entry]) -> None:
            await asyncio.shield(_send_piece(run, card.CARD, body, stored))

        pulls.append(asyncio.create_task(card.pull(run.ctx, run.grant, tokens, run.run_id, report, send)))
    try:
        await asyncio.gather(*pulls)
    except BaseException:
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        raise
    finally:  # the report lists the types in this order, whichever ended first
        report.resources = {k: report.resources[k] for k in kinds if k in report.resources}


async def _pull_type(run: _Run, kind: str, since: str | None, tokens: _Tokens) -> None:
    ctx, grant, report = run.ctx, run.grant, run.report
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
        classified = await crossversion.settle(ctx, grant.id, classified, report.lineage, counts, run.run_id)
    candidates: list[Entry] = []
    for entry, verdict in classified:
        counts[verdict] += 1
        if verdict != "unchanged":
            candidates.append(entry)
    valid, sizes, held = await _validate(ctx, kind, candidates)
    for entry, issues in held:
        counts["invalid"] += 1
        report.invalid += 1
        for issue in issues:
            report.issues.append(
                {**issue, "diagnostics": f"{kind}/{entry.resource_id} quarantined: {issue['diagnostics']}"}
            )
    await ledger.quarantine(ctx.pool, grant.id, kind, held, run.run_id)
    await _forward(run, kind, valid, sizes)


async def _validate(
    ctx: SyncContext, kind: str, candidates: list[Entry]
) -> tuple[list[Entry], list[int], list[tuple[Entry, list[dict[str, Any]]]]]:
    """Split new and changed entries into valid ones, with their sizes as connect stores them,
    and quarantined ones with their issues.

    The validation workers measure each entry as connect will store it (`connect_size`, off the
    event loop); an entry that cannot fit in a piece alone is quarantined here with the same
    measure `split_entries` cuts by, so it can never fail the whole run there."""
    if not candidates:
        return [], [], []
    try:
        problems, sizes = await ctx.validator.check([e.raw for e in candidates])
    except BrokenProcessPool as e:
        raise ValidationUnavailableError("a validation worker stopped during the run") from e
    limit = ctx.settings.lfh_max_bundle_bytes
    overhead = BundleHeader.fresh(0).connect_overhead()
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for index, size in enumerate(sizes):
        if overhead + size > limit:
            found[index].append(
                _issue(
                    f"the entry is {size} bytes as connect stores it (connect re-serialises it: "
                    "non-ASCII characters as 6-byte \\u escapes, spaces after separators, decimals "
                    "as floats), more than one connect record holds (BLUEBUTTON_LFH_MAX_BUNDLE_BYTES)",
                    "too-costly",
                )
            )
    for index, _ref, path, message in problems:
        element = path.replace(f"Bundle.entry[{index}].resource", kind, 1).replace(
            f"Bundle.entry[{index}]", "entry", 1
        )
        found[index].append(_issue(f"{element}: {message}", "structure", path=element))
    kept = [i for i in range(len(candidates)) if i not in found]
    held = [(candidates[i], issues) for i, issues in sorted(found.items())]
    return [candidates[i] for i in kept], [sizes[i] for i in kept], held


async def _forward(run: _Run, kind: str, valid: list[Entry], sizes: list[int]) -> None:
    """Each piece to connect, then its ledger rows. The POST and the recording of its answer are
    shielded from cancellation: a run stopped mid-POST still records what connect stored."""
    if not valid:
        return
    header = BundleHeader.fresh(total=len(valid))
    limit = run.ctx.settings.lfh_max_bundle_bytes
    pieces = split_entries([e.raw for e in valid], limit, header, sizes)
    for piece in pieces:
        await asyncio.shield(_send_piece(run, kind, piece.body, valid[piece.start : piece.stop]))


async def _send_piece(run: _Run, kind: str, body: bytes, stored: list[Entry]) -> None:
    ctx, report = run.ctx, run.report
    timeout = ctx.settings.sync_lfh_timeout_seconds
    try:
        record = await ctx.connect.post_bundle(body, timeout=timeout)
        record_uuid, location = record.uuid, record.location
    except ConnectLocationUnknownError as e:
        # connect's Kafka-callback race: stored (it gave the uuid), location unknown. Never resent.
        record_uuid, location = e.record_uuid, None
        report.location_unknown += 1
        report.issues.append(
            _issue(
                f"connect stored Bundle {record_uuid} ({len(stored)} {kind}) but answered without its "
                "data_record_location (a known race in connect); recorded as stored, location unknown, "
                "and not sent again",
                "informational",
                "information",
            )
        )
    except ConnectTimeoutError as e:
        raise ConnectTimeoutError(
            f"LinuxForHealth connect did not answer a Bundle of {len(stored)} {kind} within "
            f"{timeout:g} s (BLUEBUTTON_SYNC_LFH_TIMEOUT_SECONDS); connect may have stored it. It has no "
            "ledger row, so the next run sends these entries again: connect may hold this one Bundle "
            "twice, nothing else"
        ) from e
    except ConnectError as e:
        if "may or may not have been stored" not in e.message:
            raise
        raise ConnectError(
            f"the connection to LinuxForHealth connect failed after a Bundle of {len(stored)} {kind} "
            "was sent; connect may have stored it. It has no ledger row, so the next run sends these "
            "entries again: connect may hold this one Bundle twice, nothing else"
        ) from e
    bundle = {
        "uuid": record_uuid,
        "data_record_location": location or ledger.LOCATION_UNKNOWN,
        "entry_count": len(stored),
        "resource_type": kind,
    }
    grant_id, run_id = run.grant.id, run.run_id

    async def commit(connection: Any) -> None:
        await ledger.record_stored(connection, grant_id, kind, stored, record_uuid, location, run_id)
        if kind == "ExplanationOfBenefit":
            await crossversion.record_stored(connection, ctx, grant_id, stored)
        await runs.add_bundle(connection, run_id, bundle)

    try:
        async with ctx.pool.connection() as connection, connection.transaction():
            await commit(connection)
        return
    except Exception as e:
        if not unreachable(e):
            raise
        run.keeping.watch.went(e)
        failure = e
    deadline = ctx.settings.sync_commit_deadline_seconds
    where = location or "location unknown"
    issue = _issue(
        f"connect stored Bundle {record_uuid} ({len(stored)} {kind}, {where}) but the database did not "
        f"take its ledger rows within {deadline:g} s (BLUEBUTTON_SYNC_COMMIT_DEADLINE_SECONDS): the next "
        "run sends these entries again, so connect may hold this Bundle twice",
        "incomplete",
    )

    async def note(connection: Any) -> None:
        await runs.add_issue(connection, run_id, issue)

    run.keeping.journal.keep(
        Pending(
            f"the ledger rows of Bundle {record_uuid} ({len(stored)} {kind}, run {run_id})",
            commit,
            expires_at=time.monotonic() + deadline,
            instead=lambda: Pending(f"the issue of run {run_id} about Bundle {record_uuid}", note),
        )
    )
    raise failure
