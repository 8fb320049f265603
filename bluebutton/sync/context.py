"""What a run needs, opened once per process: the pool, the token cipher and the upstream clients."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.connect.client import ConnectClient
from bluebutton.fhir.validator import Validator
from bluebutton.settings import Settings
from bluebutton.sync.crypto import TokenCipher


@dataclass(frozen=True)
class SyncContext:
    settings: Settings
    pool: AsyncConnectionPool
    cipher: TokenCipher
    cms: CmsClient
    oauth: OAuthClient
    connect: ConnectClient
    validator: Validator
