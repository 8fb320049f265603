"""One `GET /bluebutton/fhir`: pull every page, merge, validate, split, forward, answer.

Order matters: everything is validated before the first byte goes to connect, so an invalid
claim never leaves half a beneficiary stored; and if connect fails midway, the deadline passes or
the caller leaves, the answer (or the log) says exactly which pieces it stored and which entries it
did not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from bluebutton.cms.client import CmsClient
from bluebutton.connect.client import ConnectClient
from bluebutton.errors import BundleInvalidError, CmsProtocolError, ConnectError, Issue
from bluebutton.fhir.bundles import FHIR_JSON, BundleHeader, split_entries
from bluebutton.fhir.validator import (
    Checked,
    EntriesNotJsonError,
    Validator,
    problems_to_issues,
    validate_shell,
)
from bluebutton.pull.progress import (
    Progress,
    StoredPiece,
    caller_gone_error,
    deadline_passed,
    entry_digest,
    partial_failure,
)
from bluebutton.pull.query import FhirQuery

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
    sizes: list[int] | None = None  # each entry's `connect_size`, measured by the validation workers


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
    checks: list[asyncio.Future[Checked]] = []
    sizes: list[int] = []
    pages = 0
    try:
        async for page in cms.iter_pages(query.resource_type, query.cms_params(), token, query.version):
            pages += 1
            checks += validator.submit_chunks(page.entries, len(entries))
            entries += page.entries
        fetched = time.perf_counter()
        header = BundleHeader.fresh(total=len(entries))
        problems = validate_shell(header.as_dict())
        try:
            for chunk_problems, chunk_sizes in await asyncio.gather(*checks):
                problems += chunk_problems
                sizes += chunk_sizes
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
        sizes,
    )


async def forward(pulled: Pulled, connect: ConnectClient, limit: int, progress: Progress) -> None:
    """POST, in order, the entries connect has not stored yet; on a failure, report what is
    stored and what is not. Checks before each POST whether the caller left: a POST already sent
    is waited for (its Bundle may be stored either way), none is started after."""
    digests = [entry_digest(entry) for entry in pulled.entries]
    todo = [index for index, digest in enumerate(digests) if digest not in progress.digests]
    if not todo:  # an earlier attempt under the same Idempotency-Key stored all of them
        progress.forwarding = True
        return
    sizes = None if pulled.sizes is None else [pulled.sizes[index] for index in todo]
    pieces = split_entries([pulled.entries[index] for index in todo], limit, pulled.header, sizes)
    progress.planned = [(todo[piece.start], piece.stop - piece.start) for piece in pieces]
    progress.forwarding = True
    for piece in pieces:
        if progress.caller_gone:
            raise caller_gone_error(progress)
        progress.sending = True
        try:
            record = await connect.post_bundle(piece.body)
        except ConnectError as e:
            if not progress.stored:
                raise
            raise partial_failure(progress, e) from e
        progress.stored.append(StoredPiece(todo[piece.start], piece.stop - piece.start, record))
        progress.digests.update(digests[todo[n]] for n in range(piece.start, piece.stop))
        progress.sent += 1
        progress.sending = False


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
                    raise caller_gone_error(progress)
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
            raise deadline_passed(progress, self.pull_timeout) from e

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
