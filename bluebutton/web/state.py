"""The typed lifespan state: the composition root's resources, and what the web builds on them."""

from __future__ import annotations

from typing import TypedDict

from bluebutton.pull.idempotency import IdempotentTransfer
from bluebutton.resources import Resources
from bluebutton.sync.service import SyncService


class State(TypedDict):
    resources: Resources
    idempotent: IdempotentTransfer  # the one-shot transfer behind an Idempotency-Key
    sync: SyncService | None  # None: no BLUEBUTTON_DATABASE_URL, grant keeping off
