"""The typed lifespan state: every resource the app opens at start-up and closes at shutdown."""

from __future__ import annotations

from typing import TypedDict

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient
from bluebutton.cms.pending import PendingStore
from bluebutton.connect.client import ConnectClient
from bluebutton.fhir.validator import Validator
from bluebutton.pull.idempotency import IdempotentTransfer
from bluebutton.pull.pipeline import Transfer
from bluebutton.settings import Settings
from bluebutton.sync.service import SyncService
from bluebutton.web.console.sessions import ConsoleSessions


class State(TypedDict):
    settings: Settings
    cms: CmsClient
    connect: ConnectClient
    validator: Validator
    oauth: OAuthClient
    pending: PendingStore
    transfer: Transfer
    idempotent: IdempotentTransfer  # the transfer behind an Idempotency-Key
    sync: SyncService | None  # None: no BLUEBUTTON_DATABASE_URL, grant keeping off
    console_sessions: ConsoleSessions  # signed-in console sessions and unused sign-in forms
