"""`python -m bluebutton healthcheck`: probe a bluebutton process on this host (the container's
HEALTHCHECK; the emulators' too, with another port and path).

One GET to the loopback interface. Over HTTPS it trusts only the certificate the service is set to
serve (`BLUEBUTTON_TLS_CERT`), whoever issued it, and checks that the certificate covers the public
host name (that of `BLUEBUTTON_CALLBACK_URL`): the probe fails where a browser would. Verification is
never switched off; `BLUEBUTTON_TLS=false` probes plain HTTP. Standard library only, so a probe every
30 s costs no more than starting the interpreter and reading the settings.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_SECONDS = 5.0  # below the HEALTHCHECK --timeout of the Dockerfile (10 s)


@dataclass(frozen=True)
class Probe:
    """Where to knock and what counts as healthy."""

    port: int
    server_name: str  # what the certificate must cover; also the Host header
    cert: Path | None  # PEM trusted as the server's certificate (chain); None: the system's store
    tls: bool = True
    address: str = "127.0.0.1"
    path: str = "/health"
    any_status: bool = False  # healthy on any answer below 500 (an emulator's root), not only 200


def tls_context(cert: Path | None) -> ssl.SSLContext:
    """Verification on, with the served certificate itself as a trust anchor."""
    context = ssl.create_default_context(cafile=None if cert is None else str(cert))
    # A leaf or an intermediate is enough to anchor: the service's own certificate is what we trust.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def check(probe: Probe) -> tuple[bool, str]:
    """(healthy, one line saying why); never raises for a network or TLS failure."""
    conn = http.client.HTTPConnection(probe.server_name, probe.port, timeout=TIMEOUT_SECONDS)
    try:
        # Connect to the address, but name the server (SNI, certificate, Host) as the public does.
        conn.sock = socket.create_connection((probe.address, probe.port), timeout=TIMEOUT_SECONDS)
        if probe.tls:
            conn.sock = tls_context(probe.cert).wrap_socket(conn.sock, server_hostname=probe.server_name)
        conn.request("GET", probe.path, headers={"Connection": "close"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:  # ssl.SSLError is an OSError
        return False, f"unhealthy: {e}"
    finally:
        conn.close()
    healthy = status < 500 if probe.any_status else status == 200
    return healthy, f"{'healthy' if healthy else 'unhealthy'}: GET {probe.path} -> {status}"
