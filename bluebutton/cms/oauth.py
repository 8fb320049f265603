"""OAuth 2.0 with Blue Button: authorize URL with state and PKCE S256, code exchange, refresh, revoke.

CMS rules (bb2-api.md §2): PKCE S256 and a state of 16+ characters are mandatory; codes live 60 s
and are single-use, so an exchange is never retried; refresh tokens are single-use and rotate, so
concurrent refreshes of one token share one call to CMS; the client authenticates with HTTP Basic
and never sends a Bearer header to the token endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from bluebutton.cms.pending import PendingAuthorization
from bluebutton.errors import (
    AccessDeniedError,
    CmsRefreshRejectedError,
    CmsTokenError,
    CmsTokenUnreachableError,
    NotConfiguredError,
    OAuthError,
)
from bluebutton.outbound.responses import read_error_body
from bluebutton.settings import Settings

# Scopes a beneficiary removes by declining to share demographic data (bb2-api.md §2.11).
DEMOGRAPHIC_SCOPES = frozenset(
    {"profile", "patient/Patient.read", "patient/Patient.r", "patient/Patient.s", "patient/Patient.rs"}
)


def s256_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_pending_authorization(sync: bool = False, version: int = 2) -> PendingAuthorization:
    # 32 random bytes → 43 URL-safe characters for the state; 64 → 86 for the verifier (43-128).
    return PendingAuthorization(
        state=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(64),
        created_at=time.time(),
        sync=sync,
        version=version,
    )


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str | None
    token_type: str
    expires_in: int
    expires_at: str
    scope: list[str]
    patient: str | None
    access_grant_expiration: str | None
    api_version: int = 2  # tokens are version-bound (bb2-v3.md §2.5): the version they came from

    @property
    def demographics_declined(self) -> bool:
        return not DEMOGRAPHIC_SCOPES.intersection(self.scope)

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "patient": self.patient,
            "access_grant_expiration": self.access_grant_expiration,
            "api_version": self.api_version,
        }


def _token_set(response: httpx.Response, version: int) -> TokenSet:
    try:
        body = orjson.loads(response.content)
        access_token = body["access_token"]
        expires_in = int(body.get("expires_in", 3600))
        if not isinstance(access_token, str) or not access_token:
            raise ValueError("access_token")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CmsTokenError(
            "Blue Button's token endpoint answered 200 without a usable token set",
            upstream_status=response.status_code,
        ) from e
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    scope = body.get("scope") or ""
    return TokenSet(
        access_token=access_token,
        refresh_token=body.get("refresh_token"),
        token_type=body.get("token_type", "Bearer"),
        expires_in=expires_in,
        expires_at=expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        scope=scope.split() if isinstance(scope, str) else [],
        patient=body.get("patient"),
        access_grant_expiration=body.get("access_grant_expiration"),
        api_version=version,
    )


class OAuthClient:
    """Verb methods over CMS's `/v{n}/o/` endpoints, sharing the CMS HTTP client.

    Each call names its API version (default: `BLUEBUTTON_CMS_API_VERSION`), so one deployment
    keeps v2 and v3 grants side by side. v3's rules (bb2-v3.md §2): `scope` is required at
    authorize (always sent), a refresh must be form-urlencoded (it always is here), and an unknown
    refresh token is a 403 "Request denied" (v2: 400), both refused refreshes alike."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._refreshing: dict[str, asyncio.Future[TokenSet]] = {}

    def credentials(self) -> tuple[str, str]:
        """The client id and secret, or a 503 naming whichever setting is missing."""
        settings = self._settings
        missing = [
            name
            for name, value in (
                ("BLUEBUTTON_CMS_CLIENT_ID", settings.cms_client_id),
                ("BLUEBUTTON_CMS_CLIENT_SECRET", settings.cms_client_secret),
            )
            if not value
        ]
        if missing:
            raise NotConfiguredError(
                f"OAuth is not configured: set {' and '.join(missing)} to the credentials of "
                "your Blue Button application (sandbox.bluebutton.cms.gov → My Sandbox Apps)."
            )
        assert settings.cms_client_id is not None and settings.cms_client_secret is not None
        return settings.cms_client_id, settings.cms_client_secret.get_secret_value()

    def _version(self, version: int | None) -> int:
        return self._settings.cms_api_version if version is None else version

    def authorization_url(self, pending: PendingAuthorization) -> str:
        client_id, _ = self.credentials()
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": str(self._settings.callback_url),
            "state": pending.state,
            "code_challenge": s256_challenge(pending.verifier),
            "code_challenge_method": "S256",
            # Always sent: v3 requires it (bb2-v3.md §2.2); `.read` scopes are valid on both (§2.3).
            "scope": self._settings.cms_scopes,
        }
        # quote_via: scopes are space-delimited and CMS expects %20, not '+' (bb2-api.md §2.2).
        base = self._settings.oauth_base(pending.version)
        return f"{base}authorize/?" + urlencode(query, quote_via=quote)

    async def _post(
        self, endpoint: str, data: dict[str, str], version: int, advice: str = ""
    ) -> httpx.Response:
        """POST a form (`application/x-www-form-urlencoded`, which v3's refresh needs, bb2-v3.md
        §2.4) to `{base}/v{n}/o/<endpoint>` with HTTP Basic client authentication."""
        client_id, secret = self.credentials()
        try:
            return await self._client.post(
                f"{self._settings.oauth_base(version)}{endpoint}",
                data=data,
                auth=httpx.BasicAuth(client_id, secret),
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as e:
            raise CmsTokenUnreachableError(
                f"could not reach Blue Button's {endpoint.rstrip('/')} endpoint ({type(e).__name__})" + advice
            ) from e

    async def _token_request(self, data: dict[str, str], version: int) -> httpx.Response:
        return await self._post(
            "token/",
            data,
            version,
            "; authorization codes are single-use, so start again at /bluebutton/authorize",
        )

    async def exchange_code(self, code: str, verifier: str, version: int | None = None) -> TokenSet:
        version = self._version(version)
        response = await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": str(self._settings.callback_url),
                "code_verifier": verifier,
            },
            version,
        )
        if response.status_code != 200:
            raise _token_error(response, "exchanging the authorization code")
        return _token_set(response, version)

    async def refresh(self, refresh_token: str, version: int | None = None) -> TokenSet:
        """Refresh once per token: concurrent callers with the same token share CMS's answer."""
        version = self._version(version)
        key = hashlib.sha256(f"{version}:{refresh_token}".encode()).hexdigest()
        running = self._refreshing.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[TokenSet] = asyncio.get_running_loop().create_future()
        self._refreshing[key] = future
        try:
            result = await self._refresh_once(refresh_token, version)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._refreshing[key]

    async def _refresh_once(self, refresh_token: str, version: int) -> TokenSet:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        response = await self._token_request(data, version)
        if response.status_code == 200:
            return _token_set(response, version)
        said = read_error_body(response)
        if response.status_code >= 500 or (said.error == "invalid_client" and response.status_code == 401):
            raise _token_error(response, "refreshing the token")
        raise CmsRefreshRejectedError(
            "Blue Button refused the refresh token. Refresh tokens are single-use (each refresh "
            "returns a new one, and the old one stops working), a newer authorization of the same "
            "beneficiary ends its earlier tokens (on either API version: a v3 consent ends the v2 "
            "tokens), and the beneficiary's 13-month grant may have expired or been revoked: use "
            "the newest token set, refresh on the version the token came from, or re-authorize at "
            "GET /bluebutton/authorize.",
            upstream_status=response.status_code,
            detail=said.detail,
        )

    async def revoke(self, token: str, version: int | None = None) -> None:
        """RFC 7009 revocation; CMS answers 200 even for unknown tokens."""
        response = await self._post("revoke_token/", {"token": token}, self._version(version))
        if response.status_code != 200:
            raise _token_error(response, "revoking the token")


def callback_error(error: str, description: str | None) -> OAuthError:
    """The error CMS redirected back with, for the caller (bb2-api.md §2.3)."""
    if error == "access_denied":
        return AccessDeniedError(
            "The beneficiary declined to share their Medicare data with this application "
            "(error=access_denied). Start again at GET /bluebutton/authorize to ask again."
        )
    text = f"Blue Button ended the authorization with error={error[:128]!r}"
    if description:
        text += f": {description[:500]}"
    return OAuthError(text + ". Start again at GET /bluebutton/authorize.")


def _token_error(response: httpx.Response, doing: str) -> CmsTokenError:
    said = read_error_body(response)
    if response.status_code == 401 and said.error in ("invalid_client", None):
        hint = "check BLUEBUTTON_CMS_CLIENT_ID and BLUEBUTTON_CMS_CLIENT_SECRET"
    elif said.error == "invalid_grant":
        hint = (
            "the code expired (codes live 60 seconds), was already used, or the grant ended; "
            "start again at GET /bluebutton/authorize"
        )
    else:
        hint = "start again at GET /bluebutton/authorize"
    return CmsTokenError(
        f"Blue Button refused {doing} (HTTP {response.status_code}); {hint}",
        upstream_status=response.status_code,
        detail=said.detail,
    )
