"""`python -m bluebutton`: serve the app with uvicorn (HTTPS unless BLUEBUTTON_TLS=false), or run a
grant-keeping command (`migrate`, `worker`, `keygen`, `rotate-keys`)."""

from __future__ import annotations

import gc
import logging
import sys

import uvicorn
from pydantic import ValidationError

from bluebutton.app import create_app
from bluebutton.outbound import redact_http_logs
from bluebutton.settings import Settings, describe_error
from bluebutton.sync import cli as sync_cli

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    redact_http_logs()


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    if command not in ("serve", *sync_cli.COMMANDS) or len(args) > 1:
        print(sync_cli.USAGE, file=sys.stderr)
        return 2
    if command == "keygen":
        return sync_cli.run(command, None)
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"bluebutton: bad setting: {describe_error(e)}", file=sys.stderr)
        return 2
    if command != "serve":
        return sync_cli.run(command, settings)
    tls = {}
    if settings.tls:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # collector's full passes, which would otherwise walk it while a large pull allocates.
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # its lines include query strings (authorization codes)
        timeout_graceful_shutdown=10,  # in-flight pulls get 10 s; idle TLS clients do not hold the stop
        log_config=None,
        **tls,  # type: ignore[arg-type]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
