"""`python -m bluebutton.sandbox.connect`: flags (see `config.py`) → uvicorn serving the emulator."""

from __future__ import annotations

from collections.abc import Sequence

import uvicorn

from bluebutton.sandbox.connect.app import create_connect_app
from bluebutton.sandbox.connect.config import parse_args


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    uvicorn.run(
        create_connect_app(config),
        host=config.host,
        port=config.port,
        ssl_certfile=config.tls_cert if config.tls else None,
        ssl_keyfile=config.tls_key if config.tls else None,
        access_log=False,
        timeout_graceful_shutdown=3,  # TLS keep-alive clients would hold a stop for 30 s
    )
