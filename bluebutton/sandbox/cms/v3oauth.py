"""OAuth endpoints of the emulated Blue Button API v3, the v2 views with v3's rules (bb2-v3.md §2, §5).

    GET  /v3/o/authorize/             `scope` required; 403 when the app is not an early adopter
    GET|POST /v3/o/authorize/<uuid>/  pilot users only (BBUser09001-09005); the SAMHSA box
    POST /v3/o/token[/]               refresh: form-urlencoded, unknown token -> 403 "Request denied"
    POST /v3/o/revoke_token/, /v3/o/revoke/   the v2 views
    GET  /v3/connect/userinfo         `sub` = `patient` = the v3 id
    GET  /v3/connect/.well-known/openid-configuration, /.well-known/openid-configuration-v3

One `TokenStore` serves both versions: a consent on either deletes every earlier token of the app
and beneficiary, the other version's included (WS `form_valid`, `DataAccessGrant` per app and
beneficiary, §2.5).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bluebutton.sandbox.cms.config import CmsSandboxConfig
from bluebutton.sandbox.cms.oauth import (
    NO_PERMISSION,
    OAuthApi,
    _append_slash,
    authenticate_bearer,
    json_error,
)
from bluebutton.sandbox.cms.pages import consent_page_v3
from bluebutton.sandbox.cms.tokens import Consent, TokenStore
from bluebutton.sandbox.cms.v3data import PILOT_USERS, V3State
from bluebutton.sandbox.cms.v3resources import userinfo_v3

REQUEST_DENIED = {"status_code": 403, "message": "Request denied"}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class V3OAuthApi(OAuthApi):
    """The v2 authorization server under `/v3`, with v3's checks in front."""

    prefix = "/v3"

    def __init__(self, config: CmsSandboxConfig, tokens: TokenStore, state: V3State) -> None:
        super().__init__(config, tokens)
        self.state = state

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v3/o/authorize", _append_slash, methods=["GET", "POST"]),
            Route("/v3/o/authorize/", self.authorize, methods=["GET"]),
            Route("/v3/o/authorize/{pending_id}/", self.approval, methods=["GET", "POST"]),
            Route("/v3/o/token", self.token, methods=["POST"]),
            Route("/v3/o/token/", self.token, methods=["POST"]),
            Route("/v3/o/revoke_token", _append_slash, methods=["POST"]),
            Route("/v3/o/revoke_token/", self.revoke_token, methods=["POST"]),
            Route("/v3/o/revoke", _append_slash, methods=["POST"]),
            Route("/v3/o/revoke/", self.revoke, methods=["POST"]),
            Route("/v3/connect/userinfo", self.userinfo, methods=["GET"]),
            Route("/v3/connect/.well-known/openid-configuration", self.openid_configuration),
            Route("/.well-known/openid-configuration-v3", self.openid_configuration),
        ]

    def token_patient(self, user: int) -> str:
        """Login and refresh look the v3 id up afresh: after a merge, the new one (§3.2)."""
        return self.state.looked_up(user)

    def may_log_in(self, user: int) -> bool:
        return self.state.all_users or user in PILOT_USERS

    def consent_form(self, action: str, user_name: str, scopes: tuple[str, ...]) -> str:
        return consent_page_v3(action, self.config.app_name, user_name, scopes, self.state.part_d_only)

    def consent_from(self, form: FormData) -> Consent:
        """The SAMHSA box, forced on for a Part-D-only app (WS `form_valid`, §5)."""
        ticked = "True" in [v for v in form.getlist("share_samhsa_data") if isinstance(v, str)]
        return Consent(include_samhsa=ticked or self.state.part_d_only, part_d_only=self.state.part_d_only)

    async def authorize(self, request: Request) -> Response:
        """v3's checks before v2's (WS `authorization.py`, §2.2)."""
        query = request.query_params
        if query.get("client_id") == self.config.client_id:
            if not self.state.early_adopter:
                return json_error(403, {"status_code": 403, "message": "Unable to verify permission"})
            if not query.get("scope"):
                return json_error(
                    400, {"status_code": 400, "message": "Missing Required Parameter(s): scope"}
                )
            if any(s.startswith("patient/AuditEvent.") for s in query["scope"].split()):
                return json_error(
                    400,
                    {
                        "status_code": 400,
                        "message": "Requesting an AuditEvent scope is only valid in token requests "
                        "through CMS Aligned Networks.",
                    },
                )
        return await super().authorize(request)

    async def token(self, request: Request) -> Response:
        """A refresh first looks its token up in the raw body parsed as a query string (WS
        `_validate_v3_token_call`): multipart, an unknown token or a non-early-adopter app → 403."""
        body = await request.body()  # first: the form is then parsed from the kept body
        form = await request.form()
        if form.get("grant_type") == "refresh_token":
            raw = parse_qs(body.decode("latin-1"))
            value = (raw.get("refresh_token") or [""])[-1]
            if not self.state.early_adopter or value not in self.tokens.refresh:
                self.tokens.token_calls["refresh_token"] += 1
                return JSONResponse(REQUEST_DENIED, status_code=403, headers=_NO_STORE)
        return await super().token(request)

    async def userinfo(self, request: Request) -> Response:
        token = authenticate_bearer(request, self.tokens)
        if isinstance(token, Response):
            return token
        if "profile" not in token.scopes:
            return json_error(403, {"detail": NO_PERMISSION})
        return JSONResponse(userinfo_v3(token.user, self.state.token_id(token.user)))

    async def openid_configuration(self, request: Request) -> Response:
        """Links under `/v3/o/...` without a trailing slash (WS `openid.py`, §2.1)."""
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/v3/o/authorize",
                "revocation_endpoint": f"{base}/v3/o/revoke_token",
                "token_endpoint": f"{base}/v3/o/token",
                "userinfo_endpoint": f"{base}/v3/connect/userinfo",
                "grant_types_supported": ["refresh_token", "authorization_code"],
                "response_types_supported": ["code", "token"],
                "fhir_metadata_uri": f"{base}/v3/fhir/metadata",
            }
        )
