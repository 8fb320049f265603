"""One `GET /bluebutton/fhir`: pull every page, merge, validate, split, forward, answer.

Order matters: everything is validated before the first byte goes to connect, so an invalid
claim never leaves half a beneficiary stored; and if connect fails midway, the answer says exactly
which pieces it stored and which entries it did not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from bluebutton.bundles import FHIR_JSON, BundleHeader, Piece, split_entries
from bluebutton.cms import CmsClient
from bluebutton.connect import ConnectClient, StoredRecord
from bluebutton.errors import (
    BundleInvalidError,
    CmsProtocolError,
    ConnectError,
    Issue,
    PartialForwardError,
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


async def forward(pulled: Pulled, connect: ConnectClient, limit: int) -> list[tuple[Piece, StoredRecord]]:
    """POST the pieces in order; on a failure, report what is stored and what is not."""
    pieces = split_entries(pulled.entries, limit, pulled.header)
    stored: list[tuple[Piece, StoredRecord]] = []
    for number, piece in enumerate(pieces, start=1):
        try:
            stored.append((piece, await connect.post_bundle(piece.body)))
        except ConnectError as e:
            if not stored:
                raise
            raise _partial_failure(pieces, stored, number, e) from e
    return stored


def _partial_failure(
    pieces: list[Piece], stored: list[tuple[Piece, StoredRecord]], failed: int, cause: ConnectError
) -> PartialForwardError:
    count = len(pieces)
    issues = [
        Issue(
            f"stored: Bundle {n} of {count}, entries {piece.start}-{piece.stop - 1}, "
            f"uuid {record.uuid}, data_record_location {record.location}",
            code="informational",
            severity="information",
        )
        for n, (piece, record) in enumerate(stored, start=1)
    ]
    first_lost = pieces[failed - 1].start
    issues.append(
        Issue(
            f"not stored: entries {first_lost}-{pieces[-1].stop - 1} (Bundles {failed}-{count} "
            f"of {count}); Bundle {failed} failed: {cause.issues()[0].diagnostics}",
            code="incomplete",
        )
    )
    return PartialForwardError(
        f"LinuxForHealth connect stored {len(stored)} of {count} Bundles; entries "
        f"{first_lost}-{pieces[-1].stop - 1} were not stored. Re-run the request, or resend "
        "from the reported entry on, to complete the transfer",
        upstream_status=cause.upstream_status,
        issues=issues,
        headers=_record_headers([record for _, record in stored]),
    )


def _record_headers(records: list[StoredRecord]) -> dict[str, str]:
    return {
        "X-LFH-Bundle-Count": str(len(records)),
        "X-LFH-Record-UUIDs": ",".join(r.uuid for r in records),
        "X-LFH-Data-Record-Locations": ",".join(r.location for r in records),
    }


def envelopes_answer(stored: list[tuple[Piece, StoredRecord]], total: int) -> list[bytes]:
    """connect's envelope unchanged for one Bundle; the documented aggregate for several."""
    if len(stored) == 1:
        return [stored[0][1].envelope]
    parts = [b'{"bundle_count":%d,"entry_count":%d,"bundles":[' % (len(stored), total)]
    for number, (piece, record) in enumerate(stored):
        start = b'{"first_entry":%d,"entry_count":%d,"envelope":' % (piece.start, piece.stop - piece.start)
        parts += [b"," + start if number else start, record.envelope, b"}"]
    parts.append(b"]}")
    return parts


class Transfer:
    """What one `GET /bluebutton/fhir` needs, built once in the lifespan: pull, then forward."""

    def __init__(
        self, cms: CmsClient, validator: Validator, connect: ConnectClient, max_bundle_bytes: int
    ) -> None:
        self.cms = cms
        self.validator = validator
        self.connect = connect
        self.max_bundle_bytes = max_bundle_bytes

    async def __call__(self, query: FhirQuery, token: str) -> Answer:
        pulled = await pull(query, token, self.cms, self.validator)
        started = time.perf_counter()
        stored = await forward(pulled, self.connect, self.max_bundle_bytes) if pulled.entries else []
        pulled.timings["forward"] = time.perf_counter() - started
        logger.info(
            "transferred %s: %d entries in %d page(s) as %d Bundle(s); fetch %.3fs validate %.3fs "
            "forward %.3fs; validation %s",
            query.resource_type,
            len(pulled.entries),
            pulled.pages,
            len(stored),
            pulled.timings["fetch"],
            pulled.timings["validate"],
            pulled.timings["forward"],
            self.validator.mode,
        )
        headers = _record_headers([record for _, record in stored])
        if not pulled.entries:
            # An empty Bundle in connect is a record of nothing; say why there is none.
            headers[SKIPPED_HEADER] = EMPTY_SEARCH
        headers["Server-Timing"] = ", ".join(
            f"{name};dur={seconds * 1000:.1f}" for name, seconds in pulled.timings.items()
        )
        if query.return_cms:
            header, entries = pulled.header, pulled.entries
            return Answer(header.parts(entries), header.size(entries), FHIR_JSON, headers)
        parts = envelopes_answer(stored, len(pulled.entries))
        return Answer(parts, sum(len(part) for part in parts), "application/json", headers)
