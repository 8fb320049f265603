"""Schema migrations: procrastinate's own schema, then our numbered SQL files, each applied once.

Applied versions are recorded in `bluebutton_schema_migrations`; a transaction-scoped advisory
lock lets several processes start at once against one database without racing.
"""

from __future__ import annotations

import logging
from importlib import resources

import procrastinate
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

LOCK_KEY = 0x6262_7379  # "bbsy": one advisory lock id for all migrators
PROCRASTINATE_VERSION = "procrastinate"


def migration_files() -> list[tuple[str, str]]:
    """(version, SQL) in order: every `NNNN_name.sql` beside this module."""
    files = [f for f in resources.files(__name__).iterdir() if f.name.endswith(".sql")]
    return [(f.name.removesuffix(".sql"), f.read_text("utf-8")) for f in sorted(files, key=lambda f: f.name)]


async def _applied(connection: AsyncConnection) -> set[str]:
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS bluebutton_schema_migrations "
        "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    rows = await (await connection.execute("SELECT version FROM bluebutton_schema_migrations")).fetchall()
    return {row[0] for row in rows}


async def migrate(pool: AsyncConnectionPool, app: procrastinate.App) -> list[str]:
    """Apply what is missing; returns the versions applied now."""
    done: list[str] = []
    async with pool.connection() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        applied = await _applied(connection)
        if PROCRASTINATE_VERSION not in applied:
            exists = await (
                await connection.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            ).fetchone()
            if not (exists and exists[0]):
                await connection.execute(app.schema_manager.get_schema().encode())
            await connection.execute(
                "INSERT INTO bluebutton_schema_migrations (version) VALUES (%s)", (PROCRASTINATE_VERSION,)
            )
            done.append(PROCRASTINATE_VERSION)
        for version, sql in migration_files():
            if version in applied:
                continue
            await connection.execute(sql.encode())
            await connection.execute(
                "INSERT INTO bluebutton_schema_migrations (version) VALUES (%s)", (version,)
            )
            done.append(version)
    for version in done:
        logger.info("applied schema migration %s", version)
    return done
