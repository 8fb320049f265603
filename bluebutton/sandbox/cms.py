"""An offline stand-in for the CMS Blue Button 2.0 API (v2): OAuth 2.0 + FHIR R4, as a Starlette app.

Used by the one-command demo, the end-to-end tests (httpx and headless Chromium over real sockets)
and the benchmark. It is meant to be faithful, errors included (bb2-api.md): a permissive fake
would hide the connector bugs we need to catch. Run it with

    python -m bluebutton.sandbox.cms [--port 5300] [--no-tls] [--claims 150] [--faults '{...}']

Every option can also come from `BLUEBUTTON_SANDBOX_CMS_<OPTION>` (e.g. `..._PORT=5300`,
`..._REDIRECT_URI="https://a/cb,https://b/cb"`, `..._NO_TLS=1`); `--help` lists them.

Modules (one concern each):

    cms.py          config, `create_cms_app`, the command line
    cms_oauth.py    authorize/login/consent, token, revoke, userinfo, discovery
    cms_tokens.py   pending authorizations, codes, grants, tokens
    cms_scopes.py   granted scopes, demographics withheld, what a token may read
    cms_pages.py    the HTML login and consent forms
    cms_fhir.py     metadata, search and read: token, scope and own-patient checks
    cms_search.py   query schema, filters, paging links, Bundle assembly
    cms_faults.py   latency, 429, 5xx, dropped connections, hostile `next` links, failing pages
    cms_admin.py    `/_sandbox/...`: faults at run time, expire tokens/grants, reset, user info
    cms_data.py     deterministic users, ids, claim lists and counts, the per-user cache
    cms_beneficiary.py  Patient, Coverage and userinfo of a user
    cms_claims.py   one ExplanationOfBenefit per claim type (valid R4 unless a defect is asked)
    cms_codes.py    code systems and code tables

Users, ids, claim counts and the deliberately invalid users are documented in `cms_data.py`; the
admin endpoints in `cms_admin.py`; fault semantics in `cms_faults.py`.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import Receive, Scope, Send

from bluebutton.sandbox.cms_admin import AdminApi
from bluebutton.sandbox.cms_data import CmsDataset
from bluebutton.sandbox.cms_faults import RAW_SEND_KEY, FaultMiddleware, Faults, FaultState
from bluebutton.sandbox.cms_fhir import FhirApi
from bluebutton.sandbox.cms_oauth import OAuthApi
from bluebutton.sandbox.cms_tokens import TokenStore

DEFAULT_CLIENT_ID: Final = "bluebutton-sandbox-client"
DEFAULT_CLIENT_SECRET: Final = "bluebutton-sandbox-secret"  # noqa: S105 - public sandbox value
DEFAULT_REDIRECT_URI: Final = "https://localhost:5200/bluebutton/authorize_callback"
DEFAULT_PORT: Final = 5300
ENV_PREFIX: Final = "BLUEBUTTON_SANDBOX_CMS_"
_CERTS: Final = Path(__file__).resolve().parents[2] / "local-certs"


@dataclass(frozen=True)
class CmsSandboxConfig:
    """Everything one emulator instance needs; defaults match the real API where it has a value."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    redirect_uris: tuple[str, ...] = (DEFAULT_REDIRECT_URI,)
    latency_ms: int = 0  # added to every FHIR response
    claims_override: int | None = None  # every user gets this many EOBs (benchmark)
    faults: Faults = field(default_factory=Faults)  # initial faults; see cms_faults
    access_token_seconds: int = 3600  # bb2-api.md §2.5
    code_seconds: int = 60  # DOT AUTHORIZATION_CODE_EXPIRE_SECONDS (§2.3)
    approval_seconds: int = 600  # AUTHORIZATION_EXPIRATION of the consent page (§2.2)
    cached_users: int = 16  # users whose claim JSON stays in memory (about 10 MB each at most)
    entry_full_url: bool = False  # CMS sends entries without fullUrl; True adds it
    app_name: str = "LinuxForHealth connect Blue Button connector"
    clock: Callable[[], float] = time.time  # injectable for expiry tests

    def __post_init__(self) -> None:
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if not self.redirect_uris:
            raise ValueError("at least one redirect URI must be registered")
        for name in (
            "latency_ms",
            "access_token_seconds",
            "code_seconds",
            "approval_seconds",
            "cached_users",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.claims_override is not None and not 0 <= self.claims_override <= 100_000:
            raise ValueError("claims_override must be between 0 and 100000")


class CmsApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope, so a fault can drop the socket."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


def create_cms_app(config: CmsSandboxConfig) -> Starlette:
    """A fresh emulator with empty token store; `app.state` exposes its parts to tests."""
    tokens = TokenStore(
        clock=config.clock,
        access_token_seconds=config.access_token_seconds,
        code_seconds=config.code_seconds,
        approval_seconds=config.approval_seconds,
    )
    dataset = CmsDataset(config.claims_override, config.cached_users)
    faults = FaultState(config.faults.model_copy())
    routes = (
        OAuthApi(config, tokens).routes()
        + FhirApi(config, tokens, dataset, faults).routes()
        + AdminApi(tokens, dataset, faults, config.faults).routes()
    )
    app = CmsApp(
        routes=routes,
        middleware=[
            # Outermost: CMS gzips on `Accept-Encoding: gzip` above 1 KB (bb2-api.md §5).
            Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6),
            Middleware(FaultMiddleware, state=faults, base_latency_ms=config.latency_ms),
        ],
    )
    app.state.config = config
    app.state.tokens = tokens
    app.state.dataset = dataset
    app.state.faults = faults
    return app


# -- command line --------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    def env(name: str, default: str | None = None) -> str | None:
        return environ.get(ENV_PREFIX + name, default)

    parser = argparse.ArgumentParser(
        prog="python -m bluebutton.sandbox.cms",
        description="Offline emulator of the CMS Blue Button 2.0 API (v2). Each option also "
        f"reads {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}PORT).",
    )
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=env("PORT", str(DEFAULT_PORT)))
    parser.add_argument("--tls-cert", type=Path, default=env("TLS_CERT", str(_CERTS / "server.pem")))
    parser.add_argument("--tls-key", type=Path, default=env("TLS_KEY", str(_CERTS / "server.key")))
    parser.add_argument(
        "--no-tls", action="store_true", default=_truthy(env("NO_TLS")), help="serve plain HTTP"
    )
    parser.add_argument("--client-id", default=env("CLIENT_ID", DEFAULT_CLIENT_ID))
    parser.add_argument("--client-secret", default=env("CLIENT_SECRET", DEFAULT_CLIENT_SECRET))
    parser.add_argument(
        "--redirect-uri",
        action="append",
        default=None,
        help=f"registered redirect URI, repeatable (default {DEFAULT_REDIRECT_URI}; env: comma separated)",
    )
    parser.add_argument(
        "--latency-ms", type=int, default=env("LATENCY_MS", "0"), help="added to every FHIR response"
    )
    parser.add_argument(
        "--claims", type=int, default=env("CLAIMS"), help="every user gets this many EOBs (benchmark)"
    )
    parser.add_argument(
        "--faults", default=env("FAULTS"), help="initial faults as JSON, e.g. '{\"rate_limit\": 2}'"
    )
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> CmsSandboxConfig:
    redirect_uris = (
        args.redirect_uri
        or [uri for uri in (environ.get(ENV_PREFIX + "REDIRECT_URI") or "").replace(",", " ").split()]
        or [DEFAULT_REDIRECT_URI]
    )
    faults = Faults.model_validate_json(args.faults) if args.faults else Faults()
    return CmsSandboxConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=tuple(redirect_uris),
        latency_ms=args.latency_ms,
        claims_override=args.claims,
        faults=faults,
    )


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn  # only the command line needs a server

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        parser.error(str(exc))
    tls: dict[str, Any] = {}
    if not args.no_tls:
        for option in (args.tls_cert, args.tls_key):
            if not option.is_file():
                parser.error(f"TLS file not found: {option} (use --no-tls for plain HTTP)")
        tls = {"ssl_certfile": str(args.tls_cert), "ssl_keyfile": str(args.tls_key)}
    # access_log off: authorize callbacks and token calls carry codes in query strings.
    uvicorn.run(
        create_cms_app(config),
        host=args.host,
        port=args.port,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,  # TLS keep-alive clients would hold a stop for 30 s
        **tls,
    )


if __name__ == "__main__":
    main()
