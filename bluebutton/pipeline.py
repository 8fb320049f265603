"""One `GET /bluebutton/fhir`: pull every page, merge, validate, split, forward, answer.

Order matters: everything is validated before the first byte goes to connect, so an invalid
claim never leaves half a beneficiary stored; and if connect fails midway, the deadline passes or
the caller leaves, the answer (or the log) says exactly which pieces it stored and which entries it
did not.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from bluebutton.bundles import FHIR_JSON, BundleHeader, split_entries
from bluebutton.cms import CmsClient
from bluebutton.connect import ConnectClient, StoredRecord
from bluebutton.errors import (
    BundleInvalidError,
    CallerGoneError,
    CmsProtocolError,
    ConnectError,
    Issue,
    PartialForwardError,
    PullTimeoutError,
)
from bluebutton.fhir import EntriesNotJsonError, Problem, Validator, problems_to_issues, validate_shell
from bluebutton.query import FhirQuery

logger = logging.getLogger(__name__)

SKIPPED_HEADER = "X-LFH-Skipped"
EMPTY_SEARCH = "empty search result; nothing was sent to connect"


@dataclass
class Pulled:
    """A validated pull: each entry's JSON bytes as CMS sent them, and the merged Bundle's header."""

    entries: list[bytes]
    header: BundleHeader
    pages: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """The response body as parts sent one after another: a pull's data is never copied into one
    body (the merged Bundle and connect's envelopes are each larger than the data)."""

    parts: Iterable[bytes]
    length: int
    media_type: str
    headers: dict[str, str]


async def pull(query: FhirQuery, token: str, cms: CmsClient, validator: Validator) -> Pulled:
    """Fetch every page and validate each entry, starting on a page as soon as it arrives."""
    started = time.perf_counter()
    entries: list[bytes] = []
    checks: list[asyncio.Future[list[Problem]]] = []
    pages = 0
    try:
        async for page in cms.iter_pages(query.resource_type, query.cms_params(), token):
            pages += 1
            checks += validator.submit_chunks(page.entries, len(entries))
            entries += page.entries
        fetched = time.perf_counter()
        header = BundleHeader.fresh(total=len(entries))
        problems = validate_shell(header.as_dict())
        try:
            for chunk in await asyncio.gather(*checks):
                problems += chunk
        except EntriesNotJsonError as e:
            raise CmsProtocolError("Blue Button answered 200 with a body that is not JSON") from e
    finally:
        for check in checks:
            check.cancel()
    validated = time.perf_counter()
    if problems:
        raise BundleInvalidError(
            f"{len(problems)} problem(s) in the {query.resource_type} data from Blue Button",
            issues=[
                Issue(
                    f"The {query.resource_type} Bundle from Blue Button is not valid FHIR R4, so "
                    "nothing was sent to LinuxForHealth connect (which would refuse it).",
                    code="invalid",
                ),
                *problems_to_issues(problems),
            ],
        )
    return Pulled(
        entries,
        header,
        pages,
        {"fetch": fetched - started, "validate": validated - fetched},
    )


@dataclass(frozen=True)
class StoredPiece:
    """One Bundle connect stored: which entries of the pull it carried, and connect's record."""

    first_entry: int
    entry_count: int
    record: StoredRecord


@dataclass
class Progress:
    """What a transfer stored so far, kept outside it so that it can still be read when the
    transfer fails, is cut short by the deadline or stopped because the caller left; a retry under
    the same Idempotency-Key starts from it (`stored` and `digests` then hold the earlier
    attempts' pieces)."""

    stored: list[StoredPiece] = field(default_factory=list)
    digests: set[str] = field(default_factory=set)  # SHA-256 of each entry connect has stored
    planned: list[tuple[int, int]] = field(default_factory=list)  # this attempt's pieces: first, count
    sent: int = 0  # pieces of `planned` stored
    sending: bool = False  # a POST is in flight: its Bundle may arrive even if we stop waiting
    forwarding: bool = False
    caller_gone: bool = False

    @property
    def bundle_count(self) -> int:
        return len(self.stored) - self.sent + len(self.planned)

    def lost_entries(self) -> str:
        """The entries of this attempt not (known to be) stored, as `a-b`."""
        first, _ = self.planned[self.sent]
        last, count = self.planned[-1]
        return f"{first}-{last + count - 1}"

    def stored_issues(self) -> list[Issue]:
        return [
            Issue(
                f"stored: Bundle {n} of {self.bundle_count}, entries {piece.first_entry}-"
                f"{piece.first_entry + piece.entry_count - 1}, uuid {piece.record.uuid}, "
                f"data_record_location {piece.record.location}",
                code="informational",
                severity="information",
            )
            for n, piece in enumerate(self.stored, start=1)
        ]

    def headers(self) -> dict[str, str]:
        return _record_headers([piece.record for piece in self.stored])


def entry_digest(entry: bytes) -> str:
    return hashlib.sha256(entry).hexdigest()


async def forward(pulled: Pulled, connect: ConnectClient, limit: int, progress: Progress) -> None:
    """POST, in order, the entries connect has not stored yet; on a failure, report what is
    stored and what is not. Checks before each POST whether the caller left: a POST already sent
    is waited for (its Bundle may be stored either way), none is started after."""
    digests = [entry_digest(entry) for entry in pulled.entries]
    todo = [index for index, digest in enumerate(digests) if digest not in progress.digests]
    if not todo:  # an earlier attempt under the same Idempotency-Key stored all of them
        progress.forwarding = True
        return
    pieces = split_entries([pulled.entries[index] for index in todo], limit, pulled.header)
    progress.planned = [(todo[piece.start], piece.stop - piece.start) for piece in pieces]
    progress.forwarding = True
    for piece in pieces:
        if progress.caller_gone:
            raise _caller_gone(progress)
        progress.sending = True
        try:
            record = await connect.post_bundle(piece.body)
        except ConnectError as e:
            if not progress.stored:
                raise
            raise _partial_failure(progress, e) from e
        progress.stored.append(StoredPiece(todo[piece.start], piece.stop - piece.start, record))
        progress.digests.update(digests[todo[n]] for n in range(piece.start, piece.stop))
        progress.sent += 1
        progress.sending = False


def _partial_failure(progress: Progress, cause: ConnectError) -> PartialForwardError:
    failed, count = len(progress.stored) + 1, progress.bundle_count
    lost = progress.lost_entries()
    issues = progress.stored_issues()
    issues.append(
        Issue(
            f"not stored: entries {lost} (Bundles {failed}-{count} of {count}); Bundle {failed} "
            f"failed: {cause.issues()[0].diagnostics}",
            code="incomplete",
        )
    )
    return PartialForwardError(
        f"LinuxForHealth connect stored {len(progress.stored)} of {count} Bundles; entries "
        f"{lost} were not stored. Re-run the request with the same Idempotency-Key to send only "
        "what is missing",
        upstream_status=cause.upstream_status,
        issues=issues,
        headers=progress.headers(),
    )


def _cut_short(progress: Progress, reason: str) -> tuple[str, list[Issue]]:
    """What a transfer stopped before its end had stored: a sentence and the issues listing it."""
    if not progress.forwarding:
        return f"{reason} before anything was sent to LinuxForHealth connect", []
    issues = progress.stored_issues()
    stored = f"LinuxForHealth connect stored {len(progress.stored)} of {progress.bundle_count} Bundles"
    if progress.sent == len(progress.planned):
        return f"{reason} after every Bundle was stored ({stored})", issues
    lost = progress.lost_entries()
    if progress.sending:
        number = len(progress.stored) + 1
        first, count = progress.planned[progress.sent]
        issues.append(
            Issue(
                f"unknown: Bundle {number} (entries {first}-{first + count - 1}) was being sent and "
                "may have been stored",
                code="incomplete",
                severity="warning",
            )
        )
    issues.append(Issue(f"not stored: entries {lost}", code="incomplete"))
    return f"{reason}: {stored}; entries {lost} were not stored", issues


def _caller_gone(progress: Progress) -> CallerGoneError:
    summary, issues = _cut_short(progress, "The caller disconnected")
    logger.warning(
        "caller left; stopped: %s; stored uuids [%s] locations [%s]",
        summary,
        ",".join(piece.record.uuid for piece in progress.stored),
        ",".join(piece.record.location for piece in progress.stored),
    )
    return CallerGoneError(summary, issues=issues, headers=progress.headers())


def _deadline_passed(progress: Progress, seconds: float) -> PullTimeoutError:
    summary, issues = _cut_short(
        progress, f"The pull did not finish within BLUEBUTTON_PULL_TIMEOUT_SECONDS={seconds:g} s"
    )
    hint = " Retry later with the same Idempotency-Key" if progress.stored else " Retry later"
    hint += ", or narrow the search (type, service_date, last_updated)."
    return PullTimeoutError(summary + "." + hint, issues=issues, headers=progress.headers())


def _record_headers(records: list[StoredRecord]) -> dict[str, str]:
    return {
        "X-LFH-Bundle-Count": str(len(records)),
        "X-LFH-Record-UUIDs": ",".join(r.uuid for r in records),
        "X-LFH-Data-Record-Locations": ",".join(r.location for r in records),
    }


def envelopes_answer(stored: list[StoredPiece], total: int) -> list[bytes]:
    """connect's envelope unchanged for one Bundle; the documented aggregate for several."""
    if len(stored) == 1:
        return [stored[0].record.envelope]
    parts = [b'{"bundle_count":%d,"entry_count":%d,"bundles":[' % (len(stored), total)]
    for number, piece in enumerate(stored):
        start = b'{"first_entry":%d,"entry_count":%d,"envelope":' % (piece.first_entry, piece.entry_count)
        parts += [b"," + start if number else start, piece.record.envelope, b"}"]
    parts.append(b"]}")
    return parts


def deadline(seconds: float) -> asyncio.Timeout:
    """The whole pull's deadline (a seam: tests make it pass when they choose)."""
    return asyncio.timeout(seconds)


class Transfer:
    """What one `GET /bluebutton/fhir` needs, built once in the lifespan: pull, then forward,
    within `BLUEBUTTON_PULL_TIMEOUT_SECONDS`."""

    def __init__(
        self,
        cms: CmsClient,
        validator: Validator,
        connect: ConnectClient,
        max_bundle_bytes: int,
        pull_timeout: float = 300.0,
    ) -> None:
        self.cms = cms
        self.validator = validator
        self.connect = connect
        self.max_bundle_bytes = max_bundle_bytes
        self.pull_timeout = pull_timeout

    async def __call__(
        self,
        query: FhirQuery,
        token: str,
        progress: Progress | None = None,
        caller_gone: Callable[[], Awaitable[object]] | None = None,
    ) -> Answer:
        """`caller_gone` returns when the caller disconnects: before forwarding, the pull is
        cancelled and nothing is sent; while forwarding, the POST in flight is waited for and no
        further one starts (a cancelled POST may still be stored, and then nobody knows)."""
        progress = Progress() if progress is None else progress
        work = asyncio.ensure_future(self._within_deadline(query, token, progress))
        if caller_gone is None:
            return await work
        gone = asyncio.ensure_future(caller_gone())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                progress.caller_gone = True
                if progress.forwarding:
                    logger.warning("caller left while forwarding; stopping after the Bundle in flight")
                else:
                    work.cancel()
                await asyncio.wait({work})
                if work.cancelled():
                    raise _caller_gone(progress)
            return work.result()
        finally:
            gone.cancel()
            work.cancel()

    async def _within_deadline(self, query: FhirQuery, token: str, progress: Progress) -> Answer:
        timeout = deadline(self.pull_timeout)
        try:
            async with timeout:
                return await self._transfer(query, token, progress)
        except TimeoutError as e:
            if not timeout.expired():
                raise
            raise _deadline_passed(progress, self.pull_timeout) from e

    async def _transfer(self, query: FhirQuery, token: str, progress: Progress) -> Answer:
        pulled = await pull(query, token, self.cms, self.validator)
        started = time.perf_counter()
        if pulled.entries:
            await forward(pulled, self.connect, self.max_bundle_bytes, progress)
        pulled.timings["forward"] = time.perf_counter() - started
        logger.info(
            "transferred %s: %d entries in %d page(s) as %d Bundle(s); fetch %.3fs validate %.3fs "
            "forward %.3fs; validation %s",
            query.resource_type,
            len(pulled.entries),
            pulled.pages,
            len(progress.stored),
            pulled.timings["fetch"],
            pulled.timings["validate"],
            pulled.timings["forward"],
            self.validator.mode,
        )
        headers = progress.headers()
        if not pulled.entries:
            # An empty Bundle in connect is a record of nothing; say why there is none.
            headers[SKIPPED_HEADER] = EMPTY_SEARCH
        headers["Server-Timing"] = ", ".join(
            f"{name};dur={seconds * 1000:.1f}" for name, seconds in pulled.timings.items()
        )
        if query.return_cms:
            header, entries = pulled.header, pulled.entries
            return Answer(header.parts(entries), header.size(entries), FHIR_JSON, headers)
        parts = envelopes_answer(progress.stored, len(pulled.entries))
        return Answer(parts, sum(len(part) for part in parts), "application/json", headers)
