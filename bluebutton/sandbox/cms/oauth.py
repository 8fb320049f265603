"""OAuth 2.0 endpoints of the emulated Blue Button 2.0 API (v2), as CMS answers them (bb2-api.md §2).

    GET  /v2/o/authorize/             validate like CMS, then 302 to the pending authorization
    GET  /v2/o/authorize/<uuid>/      login page, then consent page
    POST /v2/o/authorize/<uuid>/      login (username/password) or decision (allow=true|false)
    POST /v2/o/token[/]               authorization_code (PKCE S256) and refresh_token grants
    POST /v2/o/revoke_token/          RFC 7009 revocation
    POST /v2/o/revoke/                revoke the whole grant (all the beneficiary's tokens)
    POST /v2/o/expire_authenticated_user/<patient>/   sandbox only: the app's grant ends now
    GET  /v2/connect/userinfo         needs `profile`
    GET  /v2/connect/.well-known/openid-configuration, /.well-known/openid-configuration-v2

Slash-less `authorize`, `revoke_token` and `revoke` answer 301 to the slash form, as Django's
APPEND_SLASH does (a client POSTing to the discovery URL follows with a GET and fails, like on CMS).
Error statuses and bodies are CMS's: its own JSON for authorize checks, oauthlib/DOT bodies at the
token endpoint, DRF `{"detail": ...}` for userinfo. State lives in `tokens.TokenStore`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from bluebutton.sandbox.cms.beneficiary import userinfo
from bluebutton.sandbox.cms.config import CmsSandboxConfig
from bluebutton.sandbox.cms.data import parse_username, password, patient_id, user_for_patient_id, username
from bluebutton.sandbox.cms.pages import consent_page, error_page, login_page
from bluebutton.sandbox.cms.scopes import granted_scopes, within, without_demographics
from bluebutton.sandbox.cms.tokens import AccessToken, Consent, TokenStore

NO_CREDENTIALS = "Authentication credentials were not provided."
NO_PERMISSION = "You do not have permission to perform this action."
GRANT_TIMED_OUT = (
    "User access has timed out. To refresh Medicare data, end user must "
    "re-authenticate and consent to share their data."
)
QUERY_PARAM_REFUSED = (
    "Using the access token in the query parameters is not supported. Use the Authorization header instead"
)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_error(
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    media_type: str = "application/json",
) -> Response:
    return JSONResponse(body, status_code=status, headers=headers, media_type=media_type)


def authenticate_bearer(
    request: Request, tokens: TokenStore, media_type: str = "application/json"
) -> AccessToken | Response:
    """DRF + DOT resource-server authentication: the token, or the 400/401 CMS would send."""
    if "access_token" in request.query_params:  # §3: query tokens are refused, not ignored
        return json_error(400, {"detail": QUERY_PARAM_REFUSED}, media_type=media_type)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    challenge = 'Bearer realm="api"'
    if scheme.lower() != "bearer" or not value.strip():
        return json_error(401, {"detail": NO_CREDENTIALS}, {"WWW-Authenticate": challenge}, media_type)
    token, outcome = tokens.authenticate(value.strip())
    if token is not None:
        return token
    if outcome == "grant_expired":  # §2.7: 13-month grant over
        return json_error(401, {"detail": GRANT_TIMED_OUT}, {"WWW-Authenticate": challenge}, media_type)
    reason = "The access token has expired." if outcome == "expired" else "The access token is invalid."
    challenge += f',error="invalid_token",error_description="{reason}"'
    return json_error(401, {"detail": NO_CREDENTIALS}, {"WWW-Authenticate": challenge}, media_type)


def _with_params(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def _append_slash(request: Request) -> Response:
    """Django's APPEND_SLASH: 301 to the slash form, keeping the query (POST bodies are lost)."""
    url = request.url.replace(path=request.url.path + "/")
    return RedirectResponse(str(url), status_code=301)


def pkce_s256(verifier: str) -> str:
    """RFC 7636 S256 challenge of a verifier, unpadded base64url."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class OAuthApi:
    """Authorization server endpoints for one registered client (the connector).

    `prefix` is the version's path (`/v2`); `v3oauth.V3OAuthApi` reuses these views under `/v3`."""

    prefix = "/v2"

    def __init__(self, config: CmsSandboxConfig, tokens: TokenStore) -> None:
        self.config = config
        self.tokens = tokens

    def token_patient(self, user: int) -> str:
        """The `patient` of a token response: the version's id of the beneficiary."""
        return patient_id(user)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/o/authorize", _append_slash, methods=["GET", "POST"]),
            Route("/v2/o/authorize/", self.authorize, methods=["GET"]),
            Route("/v2/o/authorize/{pending_id}/", self.approval, methods=["GET", "POST"]),
            Route("/v2/o/token", self.token, methods=["POST"]),
            Route("/v2/o/token/", self.token, methods=["POST"]),
            Route("/v2/o/revoke_token", _append_slash, methods=["POST"]),
            Route("/v2/o/revoke_token/", self.revoke_token, methods=["POST"]),
            Route("/v2/o/revoke", _append_slash, methods=["POST"]),
            Route("/v2/o/revoke/", self.revoke, methods=["POST"]),
            Route(
                "/v2/o/expire_authenticated_user/{patient}/", self.expire_authenticated_user, methods=["POST"]
            ),
            Route("/v2/connect/userinfo", self.userinfo, methods=["GET"]),
            Route("/v2/connect/.well-known/openid-configuration", self.openid_configuration),
            Route("/.well-known/openid-configuration-v2", self.openid_configuration),
        ]

    # -- authorize -----------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        """Checks in CMS's order: app, illegal params, required params, then DOT's checks (§2.2)."""
        query = request.query_params
        client_id = query.get("client_id")
        if not client_id or client_id != self.config.client_id:
            description = "Missing Client ID" if not client_id else "Application does not exist"
            return json_error(
                400, {"status_code": 400, "error": "invalid_client", "error_description": description}
            )
        if "client_secret" in query:  # Django HttpResponseBadRequest: text/html
            return HTMLResponse("Illegal query parameter [client_secret] detected", 400)
        missing = [p for p in ("code_challenge", "code_challenge_method") if not query.get(p)]
        state = query.get("state", "")
        if not state:
            missing.append("state")
        elif len(state) < 16:
            return json_error(
                400, {"status_code": 400, "message": "State parameter should have a minimum of 16 characters"}
            )
        if missing:
            return json_error(
                400, {"status_code": 400, "message": f"Missing Required Parameter(s): {', '.join(missing)}"}
            )
        redirect_uri = query.get("redirect_uri")
        registered = self.config.redirect_uris
        if redirect_uri is None and len(registered) == 1:
            redirect_uri = registered[0]  # RFC 6749 §3.1.2.3: the only registered URI
        if redirect_uri is None or redirect_uri not in registered:  # fatal: never a redirect
            reason = "Missing redirect URI." if redirect_uri is None else "Mismatching redirect URI."
            return HTMLResponse(error_page("Error: invalid_request", reason), 400)
        response_type = query.get("response_type")
        if response_type != "code":  # RFC 6749 §4.1.2.1: redirect the error with the state
            error = (
                {"error": "unsupported_response_type"}
                if response_type
                else {"error": "invalid_request", "error_description": "Missing response_type parameter."}
            )
            return RedirectResponse(_with_params(redirect_uri, {**error, "state": state}), 302)
        if query["code_challenge_method"] != "S256":
            return json_error(
                400,
                {
                    "status_code": 400,
                    "error": "invalid_request",
                    "error_description": "code_challenge_method must be S256",
                },
            )
        scopes = granted_scopes(query.get("scope"))
        if not scopes:
            return json_error(400, {"status_code": 400, "message": "Invalid scopes."})
        pending = self.tokens.begin(client_id, redirect_uri, state, query["code_challenge"], scopes)
        return RedirectResponse(f"{self.prefix}/o/authorize/{pending.id}/", status_code=302)

    async def approval(self, request: Request) -> Response:
        pending_id = request.path_params["pending_id"]
        pending = self.tokens.find_pending(pending_id)
        if pending is None:  # unknown or older than 600 s (Approval.expired)
            return json_error(404, {"status_code": 404, "message": "Not found."})
        action = f"{self.prefix}/o/authorize/{pending.id}/"
        app_name = self.config.app_name
        if request.method == "GET":
            if pending.user is None:
                return HTMLResponse(login_page(action, app_name))
            return HTMLResponse(self.consent_form(action, username(pending.user), pending.scopes))
        form = await request.form()
        if "username" in form or "password" in form:
            user = parse_username(_field(form, "username") or "")
            given = _field(form, "password") or ""
            if (
                user is None
                or not secrets.compare_digest(given.encode(), password(user).encode())
                or not self.may_log_in(user)
            ):
                return HTMLResponse(login_page(action, app_name, "Invalid username or password."))
            pending.user = user
            return RedirectResponse(action, status_code=303)
        if pending.user is None:
            return HTMLResponse(login_page(action, app_name, "Please log in first."))
        self.tokens.finish(pending.id)
        scopes = pending.scopes
        if _field(form, "share_demographics") == "no":  # §2.11
            scopes = without_demographics(scopes)
        if (_field(form, "allow") or "").lower() not in ("true", "on", "1", "yes") or not scopes:
            return RedirectResponse(
                _with_params(pending.redirect_uri, {"error": "access_denied", "state": pending.state}), 302
            )
        code = self.tokens.approve(pending, scopes)
        code.consent = self.consent_from(form)
        return RedirectResponse(
            _with_params(pending.redirect_uri, {"code": code.code, "state": pending.state}), 302
        )

    def may_log_in(self, user: int) -> bool:
        """Whether the user can sign in on this version (v3: the pilot users only)."""
        return True

    def consent_form(self, action: str, user_name: str, scopes: tuple[str, ...]) -> str:
        return consent_page(action, self.config.app_name, user_name, scopes)

    def consent_from(self, form: FormData) -> Consent:
        """What the consent form adds to the scopes (v2: nothing)."""
        return Consent()

    # -- token endpoint --------------------------------------------------------------------------

    def _client(self, request: Request, form: FormData) -> str | Response:
        """The authenticated client id, or the error CMS answers (§2.4)."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if "Bearer" in scheme:  # CMS takes it for an access token (§2.4); never a 500 here
            return json_error(
                401, {"status_code": 401, "error": "invalid_client", "error_description": "Missing Client ID"}
            )
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                decoded = ""
            raw_id, _, raw_secret = decoded.partition(":")
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        else:
            client_id = _field(form, "client_id") or ""
            secret = _field(form, "client_secret") or ""
        if not (
            secrets.compare_digest(client_id.encode(), self.config.client_id.encode())
            and secrets.compare_digest(secret.encode(), self.config.client_secret.encode())
        ):
            return json_error(401, {"error": "invalid_client"}, _NO_STORE)
        return client_id

    async def token(self, request: Request) -> Response:
        form = await request.form()
        client_id = self._client(request, form)
        if isinstance(client_id, Response):
            return client_id
        grant_type = _field(form, "grant_type")
        self.tokens.token_calls[grant_type or ""] += 1
        if grant_type == "authorization_code":
            return self._exchange_code(form, client_id)
        if grant_type == "refresh_token":
            return self._refresh(form, client_id)
        return json_error(400, {"error": "unsupported_grant_type"}, _NO_STORE)

    def _exchange_code(self, form: FormData, client_id: str) -> Response:
        code = _field(form, "code")
        if not code:
            return _oauth_error("invalid_request", "Missing code parameter.")
        record = self.tokens.find_code(code)
        if record is None or record.client_id != client_id:  # unknown, used or older than 60 s
            return _oauth_error("invalid_grant")
        if _field(form, "redirect_uri") != record.redirect_uri:
            return _oauth_error("invalid_request", "Mismatching redirect URI.")
        # WS apps/pkce/oauth2_server.py: these fail without consuming the code.
        verifier = _field(form, "code_verifier")
        if verifier is None:
            return _oauth_error("invalid_request", "code_verifier required for this request")
        if len(verifier) > 128:
            return _oauth_error("invalid_request", "code_verifier max length is 128")
        if len(verifier) < 43:
            return _oauth_error("invalid_request", "code_verifier min length is 43")
        try:
            matches = secrets.compare_digest(pkce_s256(verifier), record.code_challenge.rstrip("="))
        except UnicodeEncodeError:
            matches = False
        if not matches:
            return _oauth_error("invalid_request", "code_challenge does not match")
        self.tokens.consume_code(code)
        access, refresh = self.tokens.issue(record.user, client_id, record.scopes, record.consent)
        return self._token_response(access, refresh.token)

    def _refresh(self, form: FormData, client_id: str) -> Response:
        value = _field(form, "refresh_token")
        if not value:
            return _oauth_error("invalid_request", "Missing refresh token parameter.")
        old = self.tokens.refresh.get(value)
        if old is None or old.client_id != client_id:  # e.g. deleted by a re-authorization
            return json_error(
                400,
                {
                    "status_code": 400,
                    "error": "invalid_request",
                    "error_description": "Refresh token not found.",
                },
                _NO_STORE,
            )
        if self.tokens.grant_expired(old.user, client_id):
            return json_error(
                401,
                {"status_code": 401, "error": "invalid_grant", "error_description": GRANT_TIMED_OUT},
                _NO_STORE,
            )
        if old.revoked:  # single use, grace period 0 (§2.6)
            return _oauth_error("invalid_grant")
        requested = _field(form, "scope")
        scopes = old.scopes
        if requested is not None:
            scopes = tuple(sorted(set(requested.split())))
            if not scopes or not within(scopes, old.scopes):
                return _oauth_error("invalid_scope")
        access, refresh = self.tokens.rotate(old, scopes)
        return self._token_response(access, refresh.token)

    def _token_response(self, access: AccessToken, refresh_token: str) -> Response:
        grant = self.tokens.grant(access.user, access.client_id)
        expiration = (
            ""
            if grant is None
            else datetime.fromtimestamp(grant.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        return JSONResponse(
            {
                "access_token": access.token,
                "expires_in": self.tokens.access_token_seconds,
                "token_type": "Bearer",
                "scope": " ".join(access.scopes),
                "refresh_token": refresh_token,
                "patient": self.token_patient(access.user),  # in every token response (§2.5)
                "access_grant_expiration": expiration,
            },
            headers=_NO_STORE,
        )

    # -- revocation -------------------------------------------------------------------------------

    async def revoke_token(self, request: Request) -> Response:
        form = await request.form()
        client_id = self._client(request, form)
        if isinstance(client_id, Response):
            return client_id
        token = _field(form, "token")
        if not token:
            return _oauth_error("invalid_request", "Missing token parameter.")
        self.tokens.revoke(token, client_id)  # RFC 7009 §2.2: 200 even for unknown tokens
        return Response(status_code=200)

    async def revoke(self, request: Request) -> Response:
        """`/v2/o/revoke/`: also deletes the grant, so every token of the pair dies (§2.9)."""
        form = await request.form()
        client_id = self._client(request, form)
        if isinstance(client_id, Response):
            return client_id
        token = _field(form, "token") or ""
        found = self.tokens.access.get(token) or self.tokens.refresh.get(token)
        if found is not None and found.client_id == client_id:
            self.tokens.revoke_user(found.user, client_id)
        return Response(status_code=200)

    async def expire_authenticated_user(self, request: Request) -> Response:
        """CMS sandbox's expiry helper (§2.9): the calling app's grant of the patient ends now, so
        data calls and refreshes answer 401 "User access has timed out" from then on."""
        client_id = self._client(request, await request.form())
        if isinstance(client_id, Response):
            return client_id
        user = user_for_patient_id(request.path_params["patient"])
        if user is None:
            return json_error(404, {"detail": "Patient was Not Found. Please check the id and try again."})
        if not self.tokens.expire_grant(user, client_id):
            return json_error(404, {"detail": "Data Access Grant was Not Found."})
        return Response("success", status_code=200, media_type="text/plain")

    # -- userinfo and discovery ---------------------------------------------------------------

    async def userinfo(self, request: Request) -> Response:
        token = authenticate_bearer(request, self.tokens)
        if isinstance(token, Response):
            return token
        if "profile" not in token.scopes:  # §2.11: demographics withheld -> 403
            return json_error(403, {"detail": NO_PERMISSION})
        return JSONResponse(userinfo(token.user))

    async def openid_configuration(self, request: Request) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/v2/o/authorize",
                "revocation_endpoint": f"{base}/v2/o/revoke_token",
                "token_endpoint": f"{base}/v2/o/token",
                "userinfo_endpoint": f"{base}/v2/connect/userinfo",
                "ui_locales_supported": ["en-US"],
                "service_documentation": "https://bluebutton.cms.client.gov/developers",
                "op_tos_uri": "https://bluebutton.cms.client.gov/terms",
                "grant_types_supported": ["refresh_token", "authorization_code"],
                "response_types_supported": ["code", "token"],
                "fhir_metadata_uri": f"{base}/v2/fhir/metadata",
            }
        )


def _oauth_error(error: str, description: str | None = None) -> Response:
    """oauthlib's error body: `{"error": ...}` plus `error_description` when there is one."""
    body = {"error": error}
    if description:
        body["error_description"] = description
    return json_error(400, body, _NO_STORE)
