"""`python -m bluebutton migrate | worker | rotate-keys`: grant keeping from the shell (the command
list and `--help` are `bluebutton.__main__.COMMANDS`)."""

from __future__ import annotations

import asyncio
import sys

from bluebutton.settings import Settings
from bluebutton.sync.crypto import TokenCipher


async def _migrate(settings: Settings) -> int:
    from bluebutton.sync.database import open_pool, resolve_conninfo
    from bluebutton.sync.jobs import SyncJobs
    from bluebutton.sync.migrations import migrate

    pool = await open_pool(await resolve_conninfo(settings), 2)
    jobs = SyncJobs(settings)
    try:
        await jobs.app.open_async(pool)
        applied = await migrate(pool, jobs.app)
    finally:
        await jobs.app.close_async()
        await pool.close()
    print(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
    return 0


async def _worker(settings: Settings) -> int:
    from bluebutton.sync.service import open_standalone

    async with open_standalone(settings, worker=False) as service:
        await service.jobs.run_worker(install_signal_handlers=True)
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
