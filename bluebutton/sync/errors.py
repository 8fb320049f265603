"""Errors of grant keeping, within the service's tree (`bluebutton.errors.BlueButtonError`).

    BlueButtonError
    ├── NotConfiguredError       503  sync off / no admin key (from bluebutton.errors)
    ├── AdminKeyError            401  X-API-Key missing or wrong
    ├── GrantNotFoundError       404
    ├── RunNotFoundError         404
    ├── GrantNotSyncingError     409  sync-now for a grant that is not active or failing
    └── GrantKeepingStalledError 503  /health/grant-keeping: no database or no live worker

Raised inside a run, never seen over HTTP:

    GrantEndedError              the grant will not sync again (revoked, expired)
    TransientRunError            the run failed for a reason worth retrying (a new run follows)
"""

from __future__ import annotations

from bluebutton.errors import BlueButtonError, Issue


class AdminKeyError(BlueButtonError):
    status_code = 401
    code = "security"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'})


class GrantNotFoundError(BlueButtonError):
    status_code = 404
    code = "not-found"


class RunNotFoundError(BlueButtonError):
    status_code = 404
    code = "not-found"


class GrantNotSyncingError(BlueButtonError):
    status_code = 409
    code = "conflict"


class GrantKeepingStalledError(BlueButtonError):
    """Grant keeping cannot progress now (for monitors); `Retry-After` says when to look again."""

    status_code = 503
    code = "transient"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "10"})


class GrantEndedError(Exception):
    def __init__(self, state: str, issue: Issue) -> None:
        super().__init__(issue.diagnostics)
        self.state = state
        self.issue = issue


class TransientRunError(Exception):
    """Carries no payload or token: only the cause's class and its caller-safe message."""
