"""`python -m bluebutton`: serve the app with uvicorn (HTTPS unless BLUEBUTTON_TLS=false), or run a
grant-keeping command (`migrate`, `worker`, `keygen`, `rotate-keys`); `--help` says which."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from bluebutton.outbound.logs import redact_http_logs
from bluebutton.settings import CERT_DIR, Settings, describe_error
from bluebutton.sync import cli as sync_cli
from bluebutton.web.app import create_app

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
logger = logging.getLogger("bluebutton")

COMMANDS = {
    "serve": "run the web service (the default)",
    "migrate": "apply the database schema (procrastinate's and ours) and exit",
    "worker": "run a standalone sync worker (any number, on any machine, one database)",
    "keygen": "print a new key for BLUEBUTTON_TOKEN_KEYS",
    "rotate-keys": "re-encrypt every stored token under the first key of BLUEBUTTON_TOKEN_KEYS",
}
EPILOG = """Settings are BLUEBUTTON_* environment variables or a .env file in the working directory
(docs/settings.md); a bad value stops start-up with one line naming the variable."""

# Connection limits of the server (docs/settings.md, "The server's fixed limits"). uvicorn's own
# defaults leave the number of connections unbounded and pick httptools, to which the h11 limit does
# not apply.
HTTP_PROTOCOL = "h11"
TIMEOUT_KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
LIMIT_CONCURRENCY = 500  # connections + running requests; beyond it uvicorn answers 503 at once
MAX_INCOMPLETE_EVENT_BYTES = 16 * 1024  # request line + headers; a longer one is refused (400)
GRACEFUL_SHUTDOWN_SECONDS = 10  # in-flight pulls get 10 s; idle TLS clients do not hold the stop

ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - what we warn about


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    redact_http_logs()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bluebutton",
        description="Pull Medicare data from CMS Blue Button 2.0 and store it in LinuxForHealth connect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, description=text, epilog=EPILOG)
    assert set(COMMANDS) == {"serve", *sync_cli.COMMANDS}
    return parser


def startup_warnings(settings: Settings) -> list[str]:
    """What a newcomer starting the service with no settings should be told, one line each."""
    warnings = []
    missing = [
        f"BLUEBUTTON_{name.upper()}"
        for name in ("cms_client_id", "cms_client_secret")
        if not getattr(settings, name)
    ]
    if missing:
        warnings.append(
            f"{' and '.join(missing)} not set: the OAuth endpoints (/bluebutton/authorize, its "
            "callback, refresh, revoke) answer 503 until they hold your Blue Button app's credentials"
        )
    development = settings.tls and settings.tls_cert.resolve() == (CERT_DIR / "server.pem").resolve()
    if development:
        warnings.append(
            f"serving the development certificate {settings.tls_cert}: its key is committed to the "
            "repository; set BLUEBUTTON_TLS_CERT and BLUEBUTTON_TLS_KEY to your own outside development"
        )
    if development and settings.host in ALL_INTERFACES:
        warnings.append(
            f"listening on all interfaces ({settings.host or '*'}:{settings.port}) with the development "
            "certificate: anyone on the network can impersonate this service; set BLUEBUTTON_HOST=127.0.0.1 "
            "or your own certificate"
        )
    return warnings


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's keyword arguments: where to listen, TLS, and the connection limits above."""
    tls = {}
    if settings.tls:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    return {
        "host": settings.host,
        "port": settings.port,
        "http": HTTP_PROTOCOL,
        "timeout_keep_alive": TIMEOUT_KEEP_ALIVE_SECONDS,
        "limit_concurrency": LIMIT_CONCURRENCY,
        "h11_max_incomplete_event_size": MAX_INCOMPLETE_EVENT_BYTES,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "access_log": False,  # its lines include query strings (authorization codes)
        "log_config": None,
        **tls,
    }


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a usage error (2, the usage already printed)
        return int(e.code or 0)
    command = args.command or "serve"
    configure_logging()
    if command == "keygen":
        return sync_cli.run(command, None)
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"bluebutton: bad setting: {describe_error(e)}", file=sys.stderr)
        return 2
    if command != "serve":
        return sync_cli.run(command, settings)
    for warning in startup_warnings(settings):
        logger.warning(warning)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # collector's full passes, which would otherwise walk it while a large pull allocates.
    gc.freeze()
    uvicorn.run(app, **server_options(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
