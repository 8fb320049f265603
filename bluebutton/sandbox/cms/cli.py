"""`python -m bluebutton.sandbox.cms`: options (also from `BLUEBUTTON_SANDBOX_CMS_<OPTION>`) → uvicorn."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bluebutton.sandbox.cms.app import create_cms_app
from bluebutton.sandbox.cms.config import (
    CERTS,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PORT,
    DEFAULT_REDIRECT_URI,
    ENV_PREFIX,
    CmsSandboxConfig,
)
from bluebutton.sandbox.cms.faults import Faults
from bluebutton.sandbox.cms.state import StateFileError


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
    parser.add_argument("--tls-cert", type=Path, default=env("TLS_CERT", str(CERTS / "server.pem")))
    parser.add_argument("--tls-key", type=Path, default=env("TLS_KEY", str(CERTS / "server.key")))
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
        "--access-token-seconds",
        type=int,
        default=env("ACCESS_TOKEN_SECONDS", "3600"),
        help="access-token lifetime (CMS: 3600); short ones exercise refresh",
    )
    parser.add_argument(
        "--weekly-claims",
        type=int,
        default=env("WEEKLY_CLAIMS", "3"),
        help="most new claims BBUser00000-09999 get per emulated week (0: none)",
    )
    parser.add_argument(
        "--faults", default=env("FAULTS"), help="initial faults as JSON, e.g. '{\"rate_limit\": 2}'"
    )
    parser.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default=env("LOG_LEVEL", "info"),
        help="the server's log level (default info)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=env("STATE"),
        help="keep tokens, grants, the clock and added claims in this file across restarts "
        "(default: in memory only)",
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
        access_token_seconds=args.access_token_seconds,
        weekly_claims=args.weekly_claims,
        state_path=args.state,
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
    try:
        app = create_cms_app(config)
    except StateFileError as exc:
        parser.exit(2, f"cms sandbox: state file {args.state}: {exc}; delete it to start afresh\n")
    # access_log off: authorize callbacks and token calls carry codes in query strings.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level=args.log_level,
        lifespan="off",
        timeout_graceful_shutdown=3,  # TLS keep-alive clients would hold a stop for 30 s
        **tls,
    )
