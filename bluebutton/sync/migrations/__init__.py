"""Schema migrations: procrastinate's own, then our numbered SQL files, each applied once by name.

Both are recorded in `bluebutton_schema_migrations`: ours as `NNNN_name`, procrastinate's as
`procrastinate:<file name>` for every `sql/migrations/*.sql` the installed procrastinate ships
(its documented upgrade path, `production/migrations.md`). A fresh database gets procrastinate's
`schema.sql`, which already holds every shipped migration, so they are all recorded; a later
procrastinate's new files are then applied in order (pre- and post-migrations together: the
migrator runs while no worker of the new version runs yet). A database recorded by the earlier
code under the single version `procrastinate` counts as procrastinate's schema of the version
installed when this tracking started (3.10.0, whose last migration is 03.04.00_50).

A transaction-scoped advisory lock lets several processes start at once against one database
without racing. `check` refuses a schema older than the code in one line that says what to run.
"""

from __future__ import annotations

import logging
from importlib import resources
from importlib.metadata import version

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

LOCK_KEY = 0x6262_7379  # "bbsy": one advisory lock id for all migrators
LEGACY_PROCRASTINATE = "procrastinate"
PROCRASTINATE_PREFIX = "procrastinate:"
# The last procrastinate migration a legacy `procrastinate` record stands for (3.10.0's).
LEGACY_BASELINE = "03.04.00_50_post_add_retry_failed_job_procedure"


class SchemaOutdatedError(RuntimeError):
    """The database lacks migrations the installed code needs; the message is one line."""


def migration_files() -> list[tuple[str, str]]:
    """(version, SQL) in order: every `NNNN_name.sql` beside this module."""
    files = [f for f in resources.files(__name__).iterdir() if f.name.endswith(".sql")]
    return [(f.name.removesuffix(".sql"), f.read_text("utf-8")) for f in sorted(files, key=lambda f: f.name)]


def procrastinate_migrations() -> list[tuple[str, str]]:
    """(recorded version, SQL) of every migration the installed procrastinate ships, in order."""
    folder = resources.files("procrastinate.sql").joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(PROCRASTINATE_PREFIX + f.name.removesuffix(".sql"), f.read_text("utf-8")) for f in files]


def procrastinate_schema() -> str:
    return resources.files("procrastinate.sql").joinpath("schema.sql").read_text("utf-8")


async def _applied(connection: AsyncConnection, *, create: bool) -> set[str]:
    if create:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS bluebutton_schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    else:
        exists = await (
            await connection.execute("SELECT to_regclass('bluebutton_schema_migrations') IS NOT NULL")
        ).fetchone()
        if not (exists and exists[0]):
            return set()
    rows = await (await connection.execute("SELECT version FROM bluebutton_schema_migrations")).fetchall()
    return {row[0] for row in rows}


def _legacy_counts_as(applied: set[str]) -> set[str]:
    """What the earlier single `procrastinate` record stands for: every shipped migration up to
    the baseline."""
    if LEGACY_PROCRASTINATE not in applied:
        return applied
    baseline = PROCRASTINATE_PREFIX + LEGACY_BASELINE
    return applied | {v for v, _ in procrastinate_migrations() if v <= baseline}


def missing(applied: set[str]) -> list[str]:
    """Versions the installed code needs that `applied` lacks, procrastinate's first."""
    known = _legacy_counts_as(applied)
    wanted = [v for v, _ in procrastinate_migrations()] + [v for v, _ in migration_files()]
    return [v for v in wanted if v not in known]


async def _record(connection: AsyncConnection, versions: list[str]) -> None:
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO bluebutton_schema_migrations (version) VALUES (%s) ON CONFLICT DO NOTHING",
            [(v,) for v in versions],
        )


async def migrate(pool: AsyncConnectionPool) -> list[str]:
    """Apply what is missing; returns the versions applied now."""
    done: list[str] = []
    async with pool.connection() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        applied = await _applied(connection, create=True)
        shipped = procrastinate_migrations()
        if not any(v.startswith(PROCRASTINATE_PREFIX) or v == LEGACY_PROCRASTINATE for v in applied):
            exists = await (
                await connection.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            ).fetchone()
            if exists and exists[0]:
                # procrastinate's tables from outside our tracking: take them as the legacy baseline
                applied = applied | {LEGACY_PROCRASTINATE}
            else:
                await connection.execute(procrastinate_schema().encode())
                await _record(connection, [v for v, _ in shipped])
                applied = applied | {v for v, _ in shipped}
                done.append(f"procrastinate {version('procrastinate')} schema")
        if LEGACY_PROCRASTINATE in applied:
            baseline = sorted(_legacy_counts_as(applied) - applied)
            await _record(connection, baseline)
            await connection.execute(
                "DELETE FROM bluebutton_schema_migrations WHERE version = %s", (LEGACY_PROCRASTINATE,)
            )
            applied = (applied - {LEGACY_PROCRASTINATE}) | set(baseline)
        for version_name, sql in [*shipped, *migration_files()]:
            if version_name in applied:
                continue
            await connection.execute(sql.encode())
            await _record(connection, [version_name])
            done.append(version_name)
    for version_name in done:
        logger.info("applied schema migration %s", version_name)
    return done


async def check(pool: AsyncConnectionPool) -> None:
    """Refuse a database older than the installed code (BLUEBUTTON_DATABASE_MIGRATE off)."""
    async with pool.connection() as connection:
        applied = await _applied(connection, create=False)
    lacking = missing(applied)
    if lacking:
        raise SchemaOutdatedError(
            f"the database schema is older than this code (procrastinate {version('procrastinate')}): "
            f"it lacks {len(lacking)} migration(s), first {lacking[0]}; run python -m bluebutton "
            "migrate (or set BLUEBUTTON_DATABASE_MIGRATE=true)"
        )
