"""The service's error tree; each class knows its HTTP status, and one handler renders them all.

    BlueButtonError                      500  base: status, FHIR issue code, message, headers
    ├── BadRequestError                  400  the caller's input (beyond what FastAPI checks)
    ├── MissingTokenError                401  no usable `Authorization: Bearer` header
    ├── BundleInvalidError               422  CMS data failed R4 validation (one issue per problem)
    ├── EntryTooLargeError               422  one entry alone exceeds connect's record size
    ├── NotConfiguredError               503  a feature needs settings that are missing
    ├── ValidationUnavailableError       503  a validation worker died mid-pull
    ├── OAuthError                       400  authorize/callback problems (unknown state, ...)
    │   └── AccessDeniedError            403  the beneficiary declined
    └── UpstreamError                    502  an upstream failed; carries upstream, status, detail
        ├── CmsError                          anything Blue Button answered or failed to answer
        │   ├── CmsUnauthorizedError     401  token expired, revoked, grant ended
        │   ├── CmsForbiddenError        403  scope missing or foreign patient
        │   ├── CmsNotFoundError         404
        │   ├── CmsBadRequestError       400  CMS refused the query
        │   ├── CmsRateLimitedError      429  after retries, with Retry-After
        │   ├── CmsTimeoutError          504
        │   ├── CmsUnavailableError      502  5xx, connection failure (transient)
        │   ├── CmsProtocolError         502  malformed body, hostile or looping links
        │   └── CmsTokenError            502  token endpoint refused (invalid_grant, ...)
        │       └── CmsRefreshRejectedError 401  refresh token reused or grant expired
        └── LfhError                          LinuxForHealth connect
            └── PartialForwardError           some pieces stored, the rest not

Messages are written for the caller and never contain a token, a code, a secret or FHIR payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class BadRequestError(BlueButtonError):
    status_code = 400
    code = "invalid"


class MissingTokenError(BlueButtonError):
    status_code = 401
    code = "login"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class BundleInvalidError(BlueButtonError):
    """The merged Bundle is not valid R4; `issues` names each entry and element."""

    status_code = 422
    code = "invalid"

    def issues(self) -> list[Issue]:
        return self.extra_issues


class EntryTooLargeError(BlueButtonError):
    status_code = 422
    code = "too-costly"


class NotConfiguredError(BlueButtonError):
    status_code = 503
    code = "not-supported"


class ValidationUnavailableError(BlueButtonError):
    status_code = 503
    code = "transient"


class OAuthError(BlueButtonError):
    status_code = 400
    code = "security"


class AccessDeniedError(OAuthError):
    status_code = 403
    code = "forbidden"


@dataclass(eq=False)
class UpstreamError(BlueButtonError):
    """An upstream failed. `transient` marks failures worth retrying later unchanged."""

    message: str
    upstream: str = "upstream"
    upstream_status: int | None = None
    detail: str | None = None
    transient: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    extra_issues: list[Issue] = field(default_factory=list)
    status_code: int = 502
    code: str = "transient"

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def issues(self) -> list[Issue]:
        text = self.message
        if self.detail:
            text = f"{text} ({self.upstream} said: {self.detail})"
        return [Issue(text, self.code), *self.extra_issues]


@dataclass(eq=False)
class CmsError(UpstreamError):
    upstream: str = "Blue Button (CMS)"


@dataclass(eq=False)
class CmsUnauthorizedError(CmsError):
    status_code: int = 401
    code: str = "login"


@dataclass(eq=False)
class CmsForbiddenError(CmsError):
    status_code: int = 403
    code: str = "forbidden"


@dataclass(eq=False)
class CmsNotFoundError(CmsError):
    status_code: int = 404
    code: str = "not-found"


@dataclass(eq=False)
class CmsBadRequestError(CmsError):
    status_code: int = 400
    code: str = "invalid"


@dataclass(eq=False)
class CmsRateLimitedError(CmsError):
    status_code: int = 429
    code: str = "throttled"
    transient: bool = True


@dataclass(eq=False)
class CmsTimeoutError(CmsError):
    status_code: int = 504
    code: str = "timeout"
    transient: bool = True


@dataclass(eq=False)
class CmsUnavailableError(CmsError):
    transient: bool = True


@dataclass(eq=False)
class CmsProtocolError(CmsError):
    code: str = "exception"


@dataclass(eq=False)
class CmsTokenError(CmsError):
    code: str = "security"


@dataclass(eq=False)
class CmsRefreshRejectedError(CmsTokenError):
    status_code: int = 401


@dataclass(eq=False)
class LfhError(UpstreamError):
    upstream: str = "LinuxForHealth connect"


@dataclass(eq=False)
class PartialForwardError(LfhError):
    """A POST failed after earlier pieces were stored; `extra_issues` lists what is where."""

    code: str = "incomplete"


def _retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(seconds)))}


def rate_limited(message: str, retry_after: float | None, detail: str | None) -> CmsRateLimitedError:
    headers = _retry_after_header(retry_after) if retry_after is not None else {}
    return CmsRateLimitedError(message, upstream_status=429, detail=detail, headers=headers)
