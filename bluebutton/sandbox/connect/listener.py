"""The emulated connect's sockets under uvicorn, so that `down` really closes the service port.

connect being down means its port refuses connections (ECONNREFUSED, as when it is not running),
not an HTTP error. ASGI cannot close a listening socket, so `bind_server` binds the sockets itself
and gives one uvicorn.Server both: the service port and, with `--control-port`, a control port that
answers only `/_sandbox/...` and stays open, so `PUT /_sandbox/faults {"down": false}` can bring
the service port back. `ServicePort` closes the service port's listener and its keep-alive
connections (a pooled connection would otherwise still reach the app), and later listens again on
the same address.

uvicorn has no public API for this, so `ServicePort` uses what `uvicorn.Server.startup` uses
(`servers`, `server_state.connections`, `config.http_protocol_class`); the sandbox tests exercise it
over real sockets, so an upgrade that breaks it fails there.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Scope


def bind(host: str, port: int) -> socket.socket:
    """A bound, not yet listening, TCP socket (asyncio's `create_server` calls `listen`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class ServicePort:
    """The service port of a running uvicorn.Server, which can be closed and opened again."""

    def __init__(self, server: uvicorn.Server, service: socket.socket, control_port: int | None) -> None:
        self._server = server
        self.host, self.port = service.getsockname()[:2]
        self.control_port = control_port

    def is_control(self, scope: Scope) -> bool:
        """Whether the request came in on the control port."""
        local = scope.get("server")
        return self.control_port is not None and local is not None and local[1] == self.control_port

    def _listeners(self) -> list[Any]:
        return [
            listener
            for listener in self._server.servers
            if any(sock.getsockname()[1] == self.port for sock in listener.sockets or ())
        ]

    async def close(self) -> None:
        """Stop listening, so new connections are refused, and close the open ones.

        A connection busy with a request (the `PUT` that asked for this, if it came this way) is
        closed once its answer is sent."""
        for listener in self._listeners():
            listener.close()
            self._server.servers.remove(listener)
        for connection in list(self._server.server_state.connections):
            local = getattr(connection, "server", None)
            if local is not None and local[1] == self.port:
                connection.shutdown()

    async def open(self) -> None:
        """Listen on the same address again; a no-op when it is listening."""
        if self._listeners():
            return
        server, config = self._server, self._server.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server.server_state, app_state=server.lifespan.state
            )

        loop = asyncio.get_running_loop()
        sock = bind(self.host, self.port)
        listener = await loop.create_server(protocol, sock=sock, ssl=config.ssl, backlog=config.backlog)
        server.servers.append(listener)


def bind_server(
    app: ASGIApp, host: str, port: int, control_port: int | None, **options: Any
) -> tuple[uvicorn.Server, list[socket.socket], ServicePort]:
    """A uvicorn.Server for `app` and the sockets to run it on (`server.run(sockets=...)` or
    `await server.serve(sockets=...)`), plus the `ServicePort` the app's `down` switch drives."""
    service = bind(host, port)
    sockets = [service]
    try:
        if control_port is not None:
            sockets.append(bind(host, control_port))
    except OSError:
        service.close()
        raise
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
    control = sockets[1].getsockname()[1] if len(sockets) > 1 else None
    return server, sockets, ServicePort(server, service, control)
