"""`python -m bluebutton migrate | worker | rotate-keys`: grant keeping from the shell, on the
composition root (the command list and `--help` are `bluebutton.__main__.COMMANDS`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bluebutton.outbound.logs import redact_http_logs
from bluebutton.resources import Overrides, open_resources
from bluebutton.settings import Settings
from bluebutton.sync.crypto import TokenCipher
from bluebutton.sync.service import SyncService, open_sync, sync_off


async def _migrate(settings: Settings) -> int:
    from bluebutton.sync.database import open_pool, resolve_conninfo
    from bluebutton.sync.migrations import migrate

    pool = await open_pool(await resolve_conninfo(settings), 2)
    try:
        applied = await migrate(pool)
    finally:
        await pool.close()
    print(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
    return 0


async def _worker(settings: Settings) -> int:
    """Runs until SIGINT/SIGTERM (exit 0), through database outages of any length; a
    configuration error (the server refuses the credentials or the database name, the schema is
    older than the code) ends it with exit code 2 and one line saying what to fix."""
    import psycopg

    from bluebutton.sync.migrations import SchemaOutdatedError

    try:
        async with open_standalone(settings, worker=False) as service:
            await service.jobs.run_worker(install_signal_handlers=True)
    except SchemaOutdatedError as e:
        print(f"bluebutton worker: {e}", file=sys.stderr)
        return 2
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bluebutton worker: the database refused the settings: {first}", file=sys.stderr)
        return 2
    return 0


async def _rotate(settings: Settings) -> int:
    from bluebutton.sync.database import open_pool, resolve_conninfo
    from bluebutton.sync.grants import rotate_keys

    assert settings.token_keys is not None
    cipher = TokenCipher.from_setting(settings.token_keys.get_secret_value())
    pool = await open_pool(await resolve_conninfo(settings), 2)
    try:
        changed = await rotate_keys(pool, cipher)
    finally:
        await pool.close()
    print(f"re-encrypted the tokens of {changed} grant(s) under the first key")
    return 0


def _sync_enabled(settings: Settings) -> bool:
    if not settings.sync_enabled:
        print(
            "bluebutton: set BLUEBUTTON_DATABASE_URL (postgresql://... or embedded) and "
            "BLUEBUTTON_TOKEN_KEYS first",
            file=sys.stderr,
        )
    return settings.sync_enabled


def migrate(settings: Settings) -> int:
    return asyncio.run(_migrate(settings)) if _sync_enabled(settings) else 2


def worker(settings: Settings) -> int:
    return asyncio.run(_worker(settings)) if _sync_enabled(settings) else 2


def rotate_keys(settings: Settings) -> int:
    return asyncio.run(_rotate(settings)) if _sync_enabled(settings) else 2


@asynccontextmanager
async def open_standalone(
    settings: Settings, *, worker: bool, overrides: Overrides | None = None
) -> AsyncIterator[SyncService]:
    """Grant keeping with the process's own resources, for the CLI and standalone workers."""
    if not settings.sync_enabled:
        raise sync_off()
    redact_http_logs()
    async with (
        open_resources(settings, overrides) as resources,
        open_sync(resources, worker=worker) as service,
    ):
        yield service
