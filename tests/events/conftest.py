"""The grant-keeping database fixtures, shared with tests/sync."""

from tests.sync.conftest import database_server, database_url, token_keys

__all__ = ["database_server", "database_url", "token_keys"]
