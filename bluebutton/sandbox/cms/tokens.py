"""The emulator's OAuth state, in memory: pending authorizations, codes, grants and tokens.

It holds the lifetimes and lifecycle rules of bb2-api.md §2 so the HTTP layer (`oauth.py`,
`fhir.py`) only translates:

- a pending authorization (CMS's `Approval`, the `/v2/o/authorize/<uuid>/` page) lives 600 s (§2.2);
- an authorization code lives 60 s and is single use (DOT default, §2.3);
- approving again for the same beneficiary deletes that pair's earlier access and refresh tokens
  (BB2-4781, §2.3) and starts a 13-month grant (THIRTEEN_MONTH, §2.7);
- access tokens live 3600 s (§2.5); refresh tokens never expire but are single use: a refresh
  revokes the old refresh token and deletes the old access token, grace period 0 (§2.6);
- revoking an access token deletes only it; revoking a refresh token also deletes its access
  token (DOT's `RefreshToken.revoke`, §2.9).

Tokens are opaque `secrets.token_urlsafe` strings (about 30 characters, like CMS's). Time comes from
an injectable clock so tests can move past expiries without sleeping.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

Clock = Callable[[], float]
AuthOutcome = Literal["ok", "invalid", "expired", "grant_expired"]

GRANT_MONTHS = 13


def _token() -> str:
    return secrets.token_urlsafe(22)


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` plus whole calendar months, the day clamped to the target month's length."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    for day in (moment.day, 30, 29, 28):
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has 28 days")


@dataclass(frozen=True)
class Consent:
    """What a v3 consent added to the scopes (bb2-v3.md §5), carried by its code and tokens and
    inherited on refresh (WS `_retrieve_prior_include_samhsa_and_part_d_eob_only_values`).

    `include_samhsa`: the v3 "Alcohol & substance use" box (unticked by default; v2 consents share
    everything). `part_d_only`: issued to a Part-D-only app. Either refused → 403 on v1/v2 EOB."""

    include_samhsa: bool = True
    part_d_only: bool = False


@dataclass
class PendingAuthorization:
    """An authorize request waiting for login and consent."""

    id: str
    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    scopes: tuple[str, ...]
    expires_at: float
    user: int | None = None


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    user: int
    scopes: tuple[str, ...]
    expires_at: float
    consent: Consent = field(default_factory=Consent)


@dataclass
class Grant:
    """CMS's DataAccessGrant: one per beneficiary and app, 13 months from consent."""

    user: int
    client_id: str
    expires_at: float


@dataclass
class AccessToken:
    token: str
    client_id: str
    user: int
    scopes: tuple[str, ...]
    expires_at: float
    consent: Consent = field(default_factory=Consent)


@dataclass
class RefreshToken:
    token: str
    client_id: str
    user: int
    scopes: tuple[str, ...]
    access_token: str | None
    revoked: bool = False
    consent: Consent = field(default_factory=Consent)


@dataclass
class TokenStore:
    """All OAuth state of one emulator instance (single process, single event loop)."""

    clock: Clock
    access_token_seconds: int = 3600
    code_seconds: int = 60
    approval_seconds: int = 600
    pending: dict[str, PendingAuthorization] = field(default_factory=dict)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    grants: dict[tuple[int, str], Grant] = field(default_factory=dict)
    access: dict[str, AccessToken] = field(default_factory=dict)
    refresh: dict[str, RefreshToken] = field(default_factory=dict)
    # Token endpoint calls by grant type, valid or not: tests count refreshes (single-use tokens).
    token_calls: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        for table in (self.pending, self.codes, self.grants, self.access, self.refresh, self.token_calls):
            table.clear()

    # -- authorize, login, consent -------------------------------------------------------------

    def begin(
        self, client_id: str, redirect_uri: str, state: str, code_challenge: str, scopes: tuple[str, ...]
    ) -> PendingAuthorization:
        now = self.clock()
        for key in [k for k, p in self.pending.items() if p.expires_at <= now]:
            del self.pending[key]
        for key in [k for k, c in self.codes.items() if c.expires_at <= now]:
            del self.codes[key]
        pending = PendingAuthorization(
            str(uuid.uuid4()),
            client_id,
            redirect_uri,
            state,
            code_challenge,
            scopes,
            now + self.approval_seconds,
        )
        self.pending[pending.id] = pending
        return pending

    def find_pending(self, pending_id: str) -> PendingAuthorization | None:
        pending = self.pending.get(pending_id)
        if pending is not None and pending.expires_at <= self.clock():
            del self.pending[pending_id]
            return None
        return pending

    def finish(self, pending_id: str) -> None:
        self.pending.pop(pending_id, None)

    def approve(self, pending: PendingAuthorization, scopes: tuple[str, ...]) -> AuthorizationCode:
        """Consent given: forget the pair's earlier tokens (BB2-4781), start a grant, issue a code."""
        if pending.user is None:
            raise ValueError("nobody logged in for this authorization")
        self.revoke_user(pending.user, pending.client_id)
        now = self.clock()
        expiry = add_months(datetime.fromtimestamp(now, UTC), GRANT_MONTHS).timestamp()
        self.grants[(pending.user, pending.client_id)] = Grant(pending.user, pending.client_id, expiry)
        code = AuthorizationCode(
            _token(),
            pending.client_id,
            pending.redirect_uri,
            pending.code_challenge,
            pending.user,
            scopes,
            now + self.code_seconds,
        )
        self.codes[code.code] = code
        return code

    # -- token endpoint ----------------------------------------------------------------------------

    def find_code(self, code: str) -> AuthorizationCode | None:
        found = self.codes.get(code)
        if found is not None and found.expires_at <= self.clock():
            del self.codes[code]
            return None
        return found

    def consume_code(self, code: str) -> None:
        self.codes.pop(code, None)

    def grant(self, user: int, client_id: str) -> Grant | None:
        return self.grants.get((user, client_id))

    def grant_expired(self, user: int, client_id: str) -> bool:
        grant = self.grant(user, client_id)
        return grant is not None and grant.expires_at <= self.clock()

    def issue(
        self, user: int, client_id: str, scopes: tuple[str, ...], consent: Consent | None = None
    ) -> tuple[AccessToken, RefreshToken]:
        consent = consent or Consent()
        access = AccessToken(
            _token(), client_id, user, scopes, self.clock() + self.access_token_seconds, consent
        )
        refresh = RefreshToken(_token(), client_id, user, scopes, access.token, consent=consent)
        self.access[access.token] = access
        self.refresh[refresh.token] = refresh
        return access, refresh

    def rotate(self, old: RefreshToken, scopes: tuple[str, ...]) -> tuple[AccessToken, RefreshToken]:
        """Single-use refresh: revoke the old refresh token, delete its access token (§2.6)."""
        self._revoke_refresh(old)
        access, refresh = self.issue(old.user, old.client_id, scopes, old.consent)
        refresh.scopes = old.scopes  # a later refresh may widen back to what was consented
        return access, refresh

    # -- resource server ---------------------------------------------------------------------------

    def authenticate(self, token: str) -> tuple[AccessToken | None, AuthOutcome]:
        found = self.access.get(token)
        if found is None:
            return None, "invalid"
        if found.expires_at <= self.clock():
            return None, "expired"
        if self.grant_expired(found.user, found.client_id):
            return None, "grant_expired"
        return found, "ok"

    # -- revocation and test helpers -----------------------------------------------------------

    def revoke(self, token: str, client_id: str) -> None:
        """RFC 7009: revoke an access or refresh token of this client; unknown tokens are fine."""
        access = self.access.get(token)
        if access is not None and access.client_id == client_id:
            del self.access[token]
            return
        refresh = self.refresh.get(token)
        if refresh is not None and refresh.client_id == client_id:
            self._revoke_refresh(refresh)

    def _revoke_refresh(self, refresh: RefreshToken) -> None:
        refresh.revoked = True
        if refresh.access_token is not None:
            self.access.pop(refresh.access_token, None)
            refresh.access_token = None

    def revoke_user(self, user: int, client_id: str | None = None) -> int:
        """Delete every token and the grant of the user (and client); returns tokens deleted."""

        def matches(owner: int, owner_client: str) -> bool:
            return owner == user and client_id in (None, owner_client)

        doomed_access = [k for k, t in self.access.items() if matches(t.user, t.client_id)]
        doomed_refresh = [k for k, t in self.refresh.items() if matches(t.user, t.client_id)]
        for key in doomed_access:
            del self.access[key]
        for key in doomed_refresh:
            del self.refresh[key]
        for pair in [k for k, g in self.grants.items() if matches(g.user, g.client_id)]:
            del self.grants[pair]
        return len(doomed_access) + len(doomed_refresh)

    def expire_access_tokens(self, user: int) -> int:
        """Make the user's access tokens expired now (their refresh tokens still work)."""
        now = self.clock()
        expired = [t for t in self.access.values() if t.user == user]
        for token in expired:
            token.expires_at = now
        return len(expired)

    def expire_grant(self, user: int, client_id: str) -> bool:
        """End one app's grant of the user now (CMS sandbox's `expire_authenticated_user`)."""
        grant = self.grant(user, client_id)
        if grant is None:
            return False
        grant.expires_at = min(grant.expires_at, self.clock())
        return True

    def expire_grants(self, user: int) -> int:
        """End the user's 13-month grants now: refresh and data calls then fail with 401."""
        now = self.clock()
        ended = [g for g in self.grants.values() if g.user == user]
        for grant in ended:
            grant.expires_at = now
        return len(ended)
