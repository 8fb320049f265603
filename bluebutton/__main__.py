"""`python -m bluebutton` (or the `bluebutton` command of an installed package): serve the app with
uvicorn (HTTPS unless BLUEBUTTON_TLS=false), run a grant-keeping command, or probe a running
service; `COMMANDS` below is the one list, and `--help` is made from it.

Only the standard library is imported here; each command imports what it needs when it runs, so
`--help` works outside the project's environment and `healthcheck` does not load the server.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bluebutton.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
logger = logging.getLogger("bluebutton")

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
    from bluebutton.outbound.logs import redact_http_logs

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    redact_http_logs()


def load_settings() -> Settings | None:
    """The settings, or None after one line on stderr naming the bad variable."""
    from pydantic import ValidationError

    from bluebutton.settings import Settings, describe_error

    try:
        return Settings()
    except ValidationError as e:
        print(f"bluebutton: bad setting: {describe_error(e)}", file=sys.stderr)
        return None


def startup_warnings(settings: Settings) -> list[str]:
    """What a newcomer starting the service with no settings should be told, one line each."""
    from bluebutton.settings import CERT_DIR

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


# --- the commands -------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """The web service, until SIGINT/SIGTERM (uvicorn's graceful stop)."""
    configure_logging()
    settings = load_settings()
    if settings is None:
        return 2
    for warning in startup_warnings(settings):
        logger.warning(warning)
    import gc

    import uvicorn

    from bluebutton.web.app import create_app

    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # collector's full passes, which would otherwise walk it while a large pull allocates.
    gc.freeze()
    uvicorn.run(app, **server_options(settings))
    return 0


def grant_keeping(action: Callable[[Settings], int]) -> Callable[[argparse.Namespace], int]:
    """A command of `bluebutton.commands` that needs the settings (and checks they enable sync)."""

    def run(args: argparse.Namespace) -> int:
        configure_logging()
        settings = load_settings()
        return 2 if settings is None else action(settings)

    return run


def migrate(settings: Settings) -> int:
    from bluebutton import commands as cli

    return cli.migrate(settings)


def worker(settings: Settings) -> int:
    from bluebutton import commands as cli

    return cli.worker(settings)


def rotate_keys(settings: Settings) -> int:
    from bluebutton import commands as cli

    return cli.rotate_keys(settings)


def keygen(args: argparse.Namespace) -> int:
    from bluebutton.sync.crypto import new_key

    print(new_key())
    return 0


def healthcheck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1", help="where to connect (default: %(default)s)")
    parser.add_argument("--port", type=int, help="default: BLUEBUTTON_PORT")
    parser.add_argument("--path", default="/health", help="default: %(default)s")
    parser.add_argument(
        "--server-name", help="name the certificate must cover (default: the host of BLUEBUTTON_CALLBACK_URL)"
    )
    parser.add_argument(
        "--cert", help="PEM file trusted as the server's certificate (chain) (default: BLUEBUTTON_TLS_CERT)"
    )
    parser.add_argument(
        "--no-tls", action="store_true", help="probe plain HTTP (as when BLUEBUTTON_TLS=false)"
    )
    parser.add_argument(
        "--any-status", action="store_true", help="healthy on any HTTP answer below 500, not only 200"
    )


def healthcheck(args: argparse.Namespace) -> int:
    """Exit status 0 = healthy, 1 = not (Docker's HEALTHCHECK reserves 2)."""
    from bluebutton.healthcheck import Probe, check

    settings = load_settings()
    if settings is None:
        print("unhealthy: the settings do not load", file=sys.stderr)
        return 1
    probe = Probe(
        address=args.address,
        port=args.port or settings.port,
        path=args.path,
        server_name=args.server_name or settings.callback_url.host or "localhost",
        cert=Path(args.cert) if args.cert else settings.tls_cert,
        tls=settings.tls and not args.no_tls,
        any_status=args.any_status,
    )
    healthy, line = check(probe)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


# The one list of commands: the parser, `--help` and the dispatch are made from it.
COMMANDS: dict[str, Command] = {
    "serve": Command("run the web service (the default)", serve),
    "migrate": Command(
        "apply the database schema (procrastinate's and ours) and exit", grant_keeping(migrate)
    ),
    "worker": Command(
        "run a standalone sync worker (any number, on any machine, one database)", grant_keeping(worker)
    ),
    "keygen": Command("print a new key for BLUEBUTTON_TOKEN_KEYS", keygen),
    "rotate-keys": Command(
        "re-encrypt every stored token under the first key of BLUEBUTTON_TOKEN_KEYS",
        grant_keeping(rotate_keys),
    ),
    "healthcheck": Command(
        "probe the service on this host (GET /health, TLS verified); exit 0 if healthy, 1 if not",
        healthcheck,
        healthcheck_arguments,
    ),
}
DEFAULT_COMMAND = "serve"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        # The `bluebutton` command of an installed package, or the module.
        prog="bluebutton" if Path(sys.argv[0]).name == "bluebutton" else "python -m bluebutton",
        description="Pull Medicare data from CMS Blue Button 2.0 and store it in LinuxForHealth connect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help, epilog=EPILOG)
        if command.arguments is not None:
            command.arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a usage error (2, the usage already printed)
        return int(e.code or 0)
    return COMMANDS[args.command or DEFAULT_COMMAND].run(args)


if __name__ == "__main__":
    sys.exit(main())
