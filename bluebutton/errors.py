"""The service's error tree; each class fixes its HTTP status and FHIR issue code, one handler renders all.

    class                                status  code       ↻  meaning
    BlueButtonError                      500  exception        message, extra issues, headers
    ├── MissingTokenError                401  login            no usable `Authorization: Bearer` header
    ├── InvalidQueryError                422  invalid          the query cannot be sent to CMS (too long)
    ├── BundleInvalidError               422  invalid          CMS data is not valid R4
    ├── EntryTooLargeError               422  too-costly       one entry alone exceeds connect's record size
    ├── BodyTooLargeError                413  too-costly       a request body over its route's cap
    ├── NotConfiguredError               503  not-supported    a feature needs settings that are missing
    ├── ValidationUnavailableError       503  transient        a validation worker died mid-pull
    ├── PullTimeoutError                 504  timeout          BLUEBUTTON_PULL_TIMEOUT_SECONDS passed
    ├── CallerGoneError                  499  incomplete       the caller disconnected; the pull stopped
    ├── IdempotencyKeyError              400  invalid          a malformed Idempotency-Key header
    ├── IdempotencyConflictError         409  conflict         the same key's first request still runs
    ├── IdempotencyKeyReusedError        422  business-rule    the same key with another query or token
    ├── IdempotencyStoreError            503  transient        the key's store (Redis) failed
    ├── PendingStoreFullError            503  throttled        too many authorizations pending; Retry-After
    ├── DatabaseUnavailableError         503  transient        grant keeping's database is away; Retry-After
    ├── OAuthError                       400  security         authorize/callback problems
    │   └── AccessDeniedError            403  forbidden        the beneficiary declined
    └── UpstreamError                    502  exception        upstream, its status, its detail
        ├── TransientUpstreamError       502  transient     ↻  the same request may succeed later
        ├── CmsError                     502  exception        Blue Button answered or failed
        │   ├── CmsUnauthorizedError     401  login            token expired, revoked, grant ended
        │   ├── CmsForbiddenError        403  forbidden        scope missing or foreign patient
        │   ├── CmsNotFoundError         404  not-found
        │   ├── CmsBadRequestError       400  invalid          CMS refused the query
        │   ├── CmsRateLimitedError      429  throttled     ↻  after retries, with Retry-After
        │   ├── CmsTimeoutError          504  timeout       ↻
        │   ├── CmsUnavailableError      502  transient     ↻  500/502/503/504, connection failure
        │   ├── CmsUnexpectedStatusError 502  exception        any other status
        │   ├── CmsProtocolError         502  exception        hostile or looping links, too many pages
        │   │   └── CmsMalformedPageError 502 transient     ↻  a 200 whose body is not a search page
        │   └── CmsTokenError            502  security         token endpoint refused (invalid_grant, ...)
        │       ├── CmsTokenUnreachableError 502 transient  ↻  token endpoint not reached
        │       └── CmsRefreshRejectedError 401 login          refresh token reused or grant expired
        └── ConnectError                 502  exception        LinuxForHealth connect refused or failed
            ├── ConnectUnreachableError  502  transient     ↻  no connection could be opened
            ├── ConnectTimeoutError      504  timeout          no answer in time; the Bundle may be stored
            ├── ConnectRecordTooLargeError 502 too-costly      over connect's 1 MB record limit: permanent
            ├── ConnectLocationUnknownError 502 incomplete     a 200 with the record's uuid but no location
            └── PartialForwardError      502  incomplete       some pieces stored, the rest not

↻ marks a subclass of `TransientUpstreamError` (a second base: the tree shows the first), which
retry code tests with `isinstance`; only those carry the issue code `transient`, so a caller reading
the OperationOutcome alone knows whether resending can help. `tests/test_errors.py` checks this
drawing against the classes.
Messages are written for the caller and never contain a token, a code, a secret or FHIR payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One `OperationOutcome.issue`."""

    diagnostics: str
    code: str = "processing"
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


class BlueButtonError(Exception):
    status_code = 500
    code = "exception"

    def __init__(
        self, message: str, *, issues: list[Issue] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra_issues = issues or []
        self.headers = headers or {}

    def issues(self) -> list[Issue]:
        return [Issue(self.message, self.code), *self.extra_issues]


class MissingTokenError(BlueButtonError):
    status_code = 401
    code = "login"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class InvalidQueryError(BlueButtonError):
    """The caller's query passed validation but cannot become a CMS request (httpx's `InvalidURL`)."""

    status_code = 422
    code = "invalid"


class BundleInvalidError(BlueButtonError):
    """The merged Bundle is not valid R4; `issues` names each entry and element."""

    status_code = 422
    code = "invalid"

    def issues(self) -> list[Issue]:
        return self.extra_issues


class EntryTooLargeError(BlueButtonError):
    status_code = 422
    code = "too-costly"


class BodyTooLargeError(BlueButtonError):
    status_code = 413
    code = "too-costly"


class NotConfiguredError(BlueButtonError):
    status_code = 503
    code = "not-supported"


class ValidationUnavailableError(BlueButtonError):
    status_code = 503
    code = "transient"


class PullTimeoutError(BlueButtonError):
    """`extra_issues` list what connect stored before the deadline, if anything."""

    status_code = 504
    code = "timeout"


class CallerGoneError(BlueButtonError):
    """Nobody reads this answer (nginx's 499): it is for the access log and the idempotency
    record, which keep what was stored before the pull stopped."""

    status_code = 499
    code = "incomplete"


class IdempotencyKeyError(BlueButtonError):
    status_code = 400
    code = "invalid"


class IdempotencyConflictError(BlueButtonError):
    status_code = 409
    code = "conflict"


class IdempotencyKeyReusedError(BlueButtonError):
    status_code = 422
    code = "business-rule"


class IdempotencyStoreError(BlueButtonError):
    status_code = 503
    code = "transient"


class PendingStoreFullError(BlueButtonError):
    """`BLUEBUTTON_STATE_MAX_PENDING` authorizations are waiting for their callback; the headers
    carry `Retry-After` (when the oldest expires)."""

    status_code = 503
    code = "throttled"


class DatabaseUnavailableError(BlueButtonError):
    """Grant keeping's PostgreSQL did not answer (stopped, restarting, unreachable): the operator
    routes and the console say so with `Retry-After` instead of a 500; nothing was changed."""

    status_code = 503
    code = "transient"
    retry_after_seconds = 10

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "The grant-keeping database (PostgreSQL, BLUEBUTTON_DATABASE_URL) is unreachable; "
            "nothing was changed. Grant keeping resumes by itself when it answers again: retry later.",
            headers={"Retry-After": str(self.retry_after_seconds)},
        )


class OAuthError(BlueButtonError):
    status_code = 400
    code = "security"


class AccessDeniedError(OAuthError):
    status_code = 403
    code = "forbidden"


class UpstreamError(BlueButtonError):
    """An upstream failed: which one, the status it answered (if any) and what it said."""

    status_code = 502
    code = "exception"
    upstream = "upstream"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        detail: str | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, issues=issues, headers=headers)
        self.upstream_status = upstream_status
        self.detail = detail

    def issues(self) -> list[Issue]:
        text = self.message
        if self.detail:
            text = f"{text} ({self.upstream} said: {self.detail})"
        return [Issue(text, self.code), *self.extra_issues]


class TransientUpstreamError(UpstreamError):
    """The same request may succeed later, unchanged: what retry loops retry."""

    code = "transient"


class CmsError(UpstreamError):
    upstream = "Blue Button (CMS)"


class CmsUnauthorizedError(CmsError):
    status_code = 401
    code = "login"


class CmsForbiddenError(CmsError):
    status_code = 403
    code = "forbidden"


class CmsNotFoundError(CmsError):
    status_code = 404
    code = "not-found"


class CmsBadRequestError(CmsError):
    status_code = 400
    code = "invalid"


class CmsRateLimitedError(CmsError, TransientUpstreamError):
    status_code = 429
    code = "throttled"


class CmsTimeoutError(CmsError, TransientUpstreamError):
    status_code = 504
    code = "timeout"


class CmsUnavailableError(CmsError, TransientUpstreamError):
    pass


class CmsUnexpectedStatusError(CmsError):
    pass


class CmsProtocolError(CmsError):
    code = "exception"


class CmsMalformedPageError(CmsProtocolError, TransientUpstreamError):
    code = "transient"


class CmsTokenError(CmsError):
    code = "security"


class CmsTokenUnreachableError(CmsTokenError, TransientUpstreamError):
    code = "transient"


class CmsRefreshRejectedError(CmsTokenError):
    status_code = 401
    code = "login"


class ConnectError(UpstreamError):
    upstream = "LinuxForHealth connect"


class ConnectUnreachableError(ConnectError, TransientUpstreamError):
    pass


class ConnectTimeoutError(ConnectError):
    status_code = 504
    code = "timeout"


class ConnectRecordTooLargeError(ConnectError):
    """connect could not store the record (its Kafka producer's 1 MB limit): resending cannot help."""

    code = "too-costly"


class ConnectLocationUnknownError(ConnectError):
    """connect answered 200 with the record's `uuid` but `data_record_location: null`: a race in
    connect 0.42.0's Kafka callback; the record *was* stored (lfh-connect.md §7), so grant keeping
    records it as stored, location unknown, and never sends it again."""

    code = "incomplete"

    def __init__(self, message: str, *, record_uuid: str, envelope: bytes) -> None:
        super().__init__(message, upstream_status=200)
        self.record_uuid = record_uuid
        self.envelope = envelope


class PartialForwardError(ConnectError):
    """A POST failed after earlier pieces were stored; `extra_issues` lists what is where."""

    code = "incomplete"
