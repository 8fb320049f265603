"""A scrape while grant keeping's database is stopped still answers: 200, `bluebutton_database_up 0`
and none of the figures read from it (a PostgreSQL of the test's own, really stopped); a scrape that
fails for another reason (a missing table) is an internal error, not an outage."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.running import open_client
from tests.scrape import samples, value
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import Upstreams, sync_settings
from tests.sync.own_postgres import OwnPostgres, available


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    reason = available()
    if reason:
        pytest.skip(reason)
    server = OwnPostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_a_scrape_while_the_database_is_down_says_so(
    own_postgres: OwnPostgres, token_keys: str
) -> None:
    upstreams = Upstreams()
    with upstreams.router():
        async with open_client(sync_settings(own_postgres.url, token_keys)) as client:
            up = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})
            assert up.status_code == 200, up.text
            assert value(samples(up.text), "bluebutton_database_up") == 1
            assert value(samples(up.text), "bluebutton_grants", state="active") == 0

            own_postgres.stop()
            down = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})

            assert down.status_code == 200, down.text
            assert value(samples(down.text), "bluebutton_database_up") == 0
            assert "bluebutton_grants{" not in down.text
            own_postgres.start()  # the app's shutdown finds its database again


async def test_a_scrape_that_fails_for_another_reason_is_an_error_not_an_outage(
    database_url: str, token_keys: str
) -> None:
    upstreams = Upstreams()
    with upstreams.router():
        async with open_client(sync_settings(database_url, token_keys)) as client:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
                await connection.execute("ALTER TABLE bluebutton_grants RENAME TO bluebutton_grants_away")
            broken = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})

    assert broken.status_code == 500, broken.text
    assert broken.headers["content-type"] == "application/fhir+json"
    assert "bluebutton_grants" not in broken.text  # no SQL or table name in the answer
