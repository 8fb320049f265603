"""`python -m bluebutton migrate | worker | keygen | rotate-keys`: grant keeping from the shell."""

from __future__ import annotations

import asyncio
import sys

from bluebutton.settings import Settings
from bluebutton.sync.crypto import TokenCipher, new_key

COMMANDS = ("migrate", "worker", "keygen", "rotate-keys")
USAGE = """usage: python -m bluebutton [serve | migrate | worker | keygen | rotate-keys]

  serve        run the web service (the default)
  migrate      apply the database schema (procrastinate's and ours) and exit
  worker       run a standalone sync worker (any number, on any machine, one database)
  keygen       print a new key for BLUEBUTTON_TOKEN_KEYS
  rotate-keys  re-encrypt every stored token under the first key of BLUEBUTTON_TOKEN_KEYS
"""


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
    from bluebutton.sync.service import open_standalone

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


def run(command: str, settings: Settings | None) -> int:
    if command == "keygen":
        print(new_key())
        return 0
    if settings is None or not settings.sync_enabled:
        print(
            "bluebutton: set BLUEBUTTON_DATABASE_URL (postgresql://... or embedded) and "
            "BLUEBUTTON_TOKEN_KEYS first",
            file=sys.stderr,
        )
        return 2
    action = {"migrate": _migrate, "worker": _worker, "rotate-keys": _rotate}[command]
    return asyncio.run(action(settings))
