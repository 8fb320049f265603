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
# out; --require-hashes and --only-binary make pip install exactly the locked wheels. One exception:
# nkeys (NATS NKey signing, from nats-py[nkeys]) is published only as a source archive, so it alone
# is built from its locked, hash-checked sdist (pure Python; its build backend comes as a wheel).
RUN pipenv verify \
 && pipenv requirements --hash > requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --only-binary=:all: --no-binary=nkeys --require-hashes \
        -r requirements.txt

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

# Health check: `python -m bluebutton healthcheck` (bluebutton/healthcheck.py) GETs /health on the
# loopback interface over HTTPS, trusting only the certificate the service is set to serve
# (BLUEBUTTON_TLS_CERT) and checking it covers the host of BLUEBUTTON_CALLBACK_URL; BLUEBUTTON_TLS=false
# probes plain HTTP. Exit status 0 = healthy, 1 = not. The emulators reuse it with --port/--path/--any-status.
USER 10001:10001
EXPOSE 5200
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "bluebutton", "healthcheck"]
CMD ["python", "-m", "bluebutton"]
