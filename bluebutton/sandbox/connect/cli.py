"""`python -m bluebutton.sandbox.connect`: flags (see `config.py`) → uvicorn serving the emulator."""

from __future__ import annotations

from collections.abc import Sequence

from bluebutton.sandbox.connect.app import create_connect_app
from bluebutton.sandbox.connect.config import parse_args
from bluebutton.sandbox.connect.listener import bind_server


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    app = create_connect_app(config)
    try:
        server, sockets, port = bind_server(
            app,
            config.host,
            config.port,
            config.control_port,
            ssl_certfile=config.tls_cert if config.tls else None,
            ssl_keyfile=config.tls_key if config.tls else None,
            access_log=False,
            log_level=config.log_level,
            timeout_graceful_shutdown=3,  # TLS keep-alive clients would hold a stop for 30 s
        )
    except OSError as e:
        raise SystemExit(f"connect sandbox: cannot listen on {config.host}: {e}") from e
    app.sandbox.port = port
    scheme = "https" if config.tls else "http"
    control = f", controls on port {port.control_port}" if port.control_port is not None else ""
    print(f"connect sandbox on {scheme}://{config.host}:{port.port}{control}", flush=True)
    server.run(sockets=sockets)
