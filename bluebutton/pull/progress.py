"""What a transfer has stored so far, and how a transfer cut short reports it.

Kept apart from the transfer so that it can still be read when the transfer fails, passes its
deadline or stops because the caller left: the answer (or the log) then names every Bundle connect
stored and the entries it did not, and a retry under the same Idempotency-Key starts from it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from bluebutton.connect.client import StoredRecord
from bluebutton.errors import CallerGoneError, ConnectError, Issue, PartialForwardError, PullTimeoutError

logger = logging.getLogger(__name__)


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
        return record_headers([piece.record for piece in self.stored])


def entry_digest(entry: bytes) -> str:
    return hashlib.sha256(entry).hexdigest()


def partial_failure(progress: Progress, cause: ConnectError) -> PartialForwardError:
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


def caller_gone_error(progress: Progress) -> CallerGoneError:
    summary, issues = _cut_short(progress, "The caller disconnected")
    logger.warning(
        "caller left; stopped: %s; stored uuids [%s] locations [%s]",
        summary,
        ",".join(piece.record.uuid for piece in progress.stored),
        ",".join(piece.record.location for piece in progress.stored),
    )
    return CallerGoneError(summary, issues=issues, headers=progress.headers())


def deadline_passed(progress: Progress, seconds: float) -> PullTimeoutError:
    summary, issues = _cut_short(
        progress, f"The pull did not finish within BLUEBUTTON_PULL_TIMEOUT_SECONDS={seconds:g} s"
    )
    hint = " Retry later with the same Idempotency-Key" if progress.stored else " Retry later"
    hint += ", or narrow the search (type, service_date, last_updated)."
    return PullTimeoutError(summary + "." + hint, issues=issues, headers=progress.headers())


def record_headers(records: list[StoredRecord]) -> dict[str, str]:
    return {
        "X-LFH-Bundle-Count": str(len(records)),
        "X-LFH-Record-UUIDs": ",".join(r.uuid for r in records),
        "X-LFH-Data-Record-Locations": ",".join(r.location for r in records),
    }
