# syntax=docker/dockerfile:1.7
#
# The bluebutton connector (and, with another command, the offline emulators of the sandbox
# profile). Build: `docker build -t bluebutton:local .`; compose does it for you.
#
# The image holds no certificate, key or credential: mount the TLS pair at /etc/bluebutton/tls
# (docker-compose.yml mounts ./local-certs there) and pass CMS credentials as environment variables.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- deps: the locked runtime dependencies, as wheels verified against Pipfile.lock's hashes ------
FROM ${PYTHON_IMAGE} AS deps

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# pipenv only reads the lock file here; it never reaches the final image.
RUN pip install pipenv==2026.10.3

WORKDIR /src
COPY Pipfile Pipfile.lock ./

# `verify` refuses a lock file that is stale against Pipfile; `requirements` leaves dev packages
# out; --require-hashes and --only-binary make pip install exactly the locked wheels.
RUN pipenv verify \
 && pipenv requirements --hash > requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --only-binary=:all: --require-hashes -r requirements.txt

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="bluebutton" \
      org.opencontainers.image.description="Connects the CMS Blue Button 2.0 API to LinuxForHealth connect"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BLUEBUTTON_HOST=0.0.0.0 \
    BLUEBUTTON_PORT=5200 \
    BLUEBUTTON_TLS_CERT=/etc/bluebutton/tls/server.pem \
    BLUEBUTTON_TLS_KEY=/etc/bluebutton/tls/server.key

# A fixed non-root uid, so mounted files and volumes can be granted to it. /var/lib/bluebutton is
# the only writable place (the emulated connect keeps its SQLite file there).
RUN groupadd --system --gid 10001 bluebutton \
 && useradd --system --uid 10001 --gid bluebutton --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bluebutton \
 && install -d -o bluebutton -g bluebutton -m 0750 /var/lib/bluebutton

COPY --from=deps /opt/venv /opt/venv

WORKDIR /app
COPY bluebutton/ ./bluebutton/
RUN python -m compileall -q /app/bluebutton

# Health check: GET /health on the loopback interface over HTTPS, trusting only the certificate the
# service is configured to serve (BLUEBUTTON_TLS_CERT) and checking it covers the public host name
# (the host of BLUEBUTTON_CALLBACK_URL, `localhost` by default). With TLS on (the default),
# verification is never switched off; BLUEBUTTON_TLS=false probes plain HTTP.
# Exit status 0 = healthy, 1 = not. The emulators reuse it with --port/--path/--any-status.
COPY --chmod=0755 <<'EOF' /usr/local/bin/bluebutton-healthcheck
#!/usr/bin/env python3
"""Probe a bluebutton process in this container; exit 0 if healthy, 1 if not."""

import argparse
import http.client
import os
import socket
import ssl
import sys
from urllib.parse import urlsplit

FALSE = {"0", "f", "false", "n", "no", "off"}  # as pydantic reads BLUEBUTTON_TLS


def main() -> int:
    callback = os.environ.get("BLUEBUTTON_CALLBACK_URL", "https://localhost/")
    parser = argparse.ArgumentParser(prog="bluebutton-healthcheck", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1", help="where to connect")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BLUEBUTTON_PORT", "5200")))
    parser.add_argument("--path", default="/health")
    parser.add_argument(
        "--server-name",
        default=urlsplit(callback).hostname or "localhost",
        help="name the certificate must cover",
    )
    parser.add_argument(
        "--cert",
        default=os.environ.get("BLUEBUTTON_TLS_CERT"),
        help="PEM file trusted as the server's certificate (chain)",
    )
    parser.add_argument(
        "--no-tls",
        action="store_true",
        default=os.environ.get("BLUEBUTTON_TLS", "true").strip().lower() in FALSE,
    )
    parser.add_argument(
        "--any-status",
        action="store_true",
        help="healthy on any HTTP answer below 500, not only 200",
    )
    args = parser.parse_args()

    conn = http.client.HTTPConnection(args.server_name, args.port, timeout=5)
    try:
        conn.sock = socket.create_connection((args.address, args.port), timeout=5)
        if not args.no_tls:
            context = ssl.create_default_context(cafile=args.cert)
            # The served certificate itself is the trust anchor, whoever issued it.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            conn.sock = context.wrap_socket(conn.sock, server_hostname=args.server_name)
        conn.request("GET", args.path, headers={"Connection": "close"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    healthy = status < 500 if args.any_status else status == 200
    print(f"{'healthy' if healthy else 'unhealthy'}: GET {args.path} -> {status}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
EOF

USER 10001:10001
EXPOSE 5200
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["bluebutton-healthcheck"]
CMD ["python", "-m", "bluebutton"]
