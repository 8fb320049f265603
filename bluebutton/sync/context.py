"""What a run needs from its process's resources (`bluebutton.resources.Resources` provides it).

A Protocol rather than a copy: the sync code reads the one set of clients, pool and cipher the
composition root opened, and names only the part of it that it uses.
"""

from __future__ import annotations

from typing import Protocol

from psycopg_pool import AsyncConnectionPool

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.connect.client import ConnectClient
from bluebutton.fhir.validator import Validator
from bluebutton.settings import Settings
from bluebutton.sync.crypto import TokenCipher


class SyncContext(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def pool(self) -> AsyncConnectionPool: ...
    @property
    def cipher(self) -> TokenCipher: ...
    @property
    def cms(self) -> CmsClient: ...
    @property
    def oauth(self) -> OAuthClient: ...
    @property
    def connect(self) -> ConnectClient: ...
    @property
    def validator(self) -> Validator: ...
