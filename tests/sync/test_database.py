"""How `sync.database` tells a database that is away (wait) from one that refuses the settings
(stop), `ping`, and `wait_for_server` waiting out a server that starts late (a PostgreSQL of the
test's own, started by the wait itself, so no timing is involved)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

import psycopg
import pytest
from procrastinate.exceptions import ConnectorException
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from bluebutton.errors import DatabaseUnavailableError
from bluebutton.sync.database import misconfigured, open_pool, ping, unreachable, wait_for_server
from tests.sync.own_postgres import OwnPostgres, available


def wrapped(cause: BaseException) -> ConnectorException:
    """What procrastinate raises: its own exception with the driver's as the cause."""
    try:
        raise ConnectorException("procrastinate's wrapper") from cause
    except ConnectorException as e:
        return e


REFUSED = psycopg.OperationalError('connection to server at "127.0.0.1", port 1 failed: Connection refused')
BAD_PASSWORD = psycopg.OperationalError('FATAL:  password authentication failed for user "app"')
NO_DATABASE = psycopg.errors.lookup("3D000")('database "nope" does not exist')
NO_ROLE = psycopg.errors.lookup("28000")('role "nobody" is not permitted to log in')
NO_TABLE = psycopg.errors.lookup("42P01")('relation "x" does not exist')


@pytest.mark.parametrize(
    ("error", "away", "refused"),
    [
        (REFUSED, True, False),
        (wrapped(REFUSED), True, False),
        (psycopg.InterfaceError("the connection is lost"), True, False),
        (DatabaseUnavailableError(), True, False),
        (PoolTimeout("no connection in 30 s"), True, False),
        (PoolClosed("the pool is closed"), True, False),
        (BAD_PASSWORD, False, True),
        (wrapped(BAD_PASSWORD), False, True),
        (NO_DATABASE, False, True),
        (wrapped(NO_ROLE), False, True),
        (NO_TABLE, False, False),  # a bug, not an outage: neither waited for nor a configuration error
        (ValueError("not the database's"), False, False),
        (ConnectorException("no cause"), False, False),
    ],
)
def test_errors_are_told_apart(error: BaseException, away: bool, refused: bool) -> None:
    assert unreachable(error) is away
    assert misconfigured(error) is refused


async def test_ping_answers_on_a_live_pool_and_says_unavailable_once_closed(database_url: str) -> None:
    pool = await open_pool(database_url, 2)
    await ping(pool)
    await pool.close()
    with pytest.raises(DatabaseUnavailableError) as raised:
        await ping(pool)
    assert isinstance(raised.value.__cause__, PoolClosed)


class _FailingPool:
    """A pool whose connection fails with an error that is no outage (as a bug would)."""

    @asynccontextmanager
    async def connection(self, **options: float) -> AsyncIterator[Any]:
        raise NO_TABLE
        yield  # pragma: no cover


async def test_ping_reraises_what_is_not_an_outage() -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        await ping(cast(AsyncConnectionPool, _FailingPool()))


async def test_wait_for_server_refuses_a_missing_database_at_once(database_url: str) -> None:
    from tests.sync.conftest import with_database

    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        await wait_for_server(with_database(database_url, "bluebutton_no_such_database"))


@pytest.fixture
def stopped_postgres() -> Iterator[OwnPostgres]:
    reason = available()
    if reason:
        pytest.skip(reason)
    server = OwnPostgres()  # initialized, not started
    try:
        yield server
    finally:
        server.close()


async def test_wait_for_server_waits_for_a_server_that_starts_late(
    stopped_postgres: OwnPostgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits: list[float] = []

    async def start_instead_of_sleeping(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # refused twice, then the server is up
            await asyncio.to_thread(stopped_postgres.start)

    monkeypatch.setattr("bluebutton.sync.database.asyncio.sleep", start_instead_of_sleeping)
    with caplog.at_level(logging.INFO, logger="bluebutton.sync.database"):
        await wait_for_server(stopped_postgres.url)

    assert waits == [1.0, 2.0]  # backoff
    messages = [r.getMessage() for r in caplog.records if r.name == "bluebutton.sync.database"]
    assert messages == [
        "the database does not answer (OperationalError); waiting for it",
        "the database answers",
    ]
