"""procrastinate's schema migrations are tracked by name beside ours: a newer procrastinate's
files are applied by `migrate`, a database older than the code is refused in one line, and a
database recorded by the earlier code (one `procrastinate` row) is taken over without re-running."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool

from bluebutton.sync import migrations
from bluebutton.sync.database import open_pool
from bluebutton.sync.migrations import SchemaOutdatedError, check, migrate

NEWER = "procrastinate:99.99.99_01_pre_a_newer_procrastinate"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    opened = await open_pool(database_url, 2)
    try:
        yield opened
    finally:
        await opened.close()


async def _applied(pool: AsyncConnectionPool) -> set[str]:
    async with pool.connection() as connection:
        rows = await (await connection.execute("SELECT version FROM bluebutton_schema_migrations")).fetchall()
    return {r[0] for r in rows}


async def test_a_fresh_database_records_every_shipped_migration_by_name(pool: AsyncConnectionPool) -> None:
    await migrate(pool)
    applied = await _applied(pool)
    shipped = {v for v, _ in migrations.procrastinate_migrations()}
    assert shipped <= applied and "procrastinate" not in applied
    assert {"0001_grants", "0002_events", "0003_runs_carry_their_jobs"} <= applied
    await check(pool)  # nothing missing
    assert await migrate(pool) == []


async def test_a_newer_procrastinate_is_refused_until_migrate_applies_it(
    pool: AsyncConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(pool)
    shipped = migrations.procrastinate_migrations()
    newer = [*shipped, (NEWER, "CREATE TABLE bb_newer_procrastinate (id integer)")]
    monkeypatch.setattr(migrations, "procrastinate_migrations", lambda: newer)
    with pytest.raises(SchemaOutdatedError) as refused:
        await check(pool)
    message = str(refused.value)
    assert "\n" not in message and NEWER in message and "python -m bluebutton migrate" in message
    assert await migrate(pool) == [NEWER]
    await check(pool)


async def test_the_earlier_single_record_is_taken_over_without_rerunning(pool: AsyncConnectionPool) -> None:
    await migrate(pool)
    async with pool.connection() as connection:  # what the earlier code left
        await connection.execute(
            "DELETE FROM bluebutton_schema_migrations WHERE version LIKE 'procrastinate:%'"
        )
        await connection.execute(
            "INSERT INTO bluebutton_schema_migrations (version) VALUES ('procrastinate')"
        )
    await check(pool)  # the legacy row stands for procrastinate 3.10's migrations: nothing missing
    assert await migrate(pool) == []
    applied = await _applied(pool)
    assert "procrastinate" not in applied
    assert {v for v, _ in migrations.procrastinate_migrations()} <= applied
