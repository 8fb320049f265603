"""Grant keeping opened with event targets, and readers of the outbox and its deliveries."""

from __future__ import annotations

import uuid
from typing import Any

from bluebutton.sync import grants
from bluebutton.sync.service import SyncService
from tests.sync.emulated import Upstreams

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
BODY_KEYS = {"id", "type", "occurred_at", "grant_id", "patient", "run_id", "counts", "reason"}
USER = 2


async def enrol_only(service: SyncService, upstreams: Upstreams, user: int = USER) -> uuid.UUID:
    """Store a grant without queueing a run: its only event is grant.created."""
    tokens = upstreams.authorize(user)
    assert tokens.patient
    return await grants.enrol(service.pool, service.context.cipher, tokens, 2, tokens.patient)


async def rows(service: SyncService, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with service.pool.connection() as connection:
        return list(await (await connection.execute(sql, args)).fetchall())


async def deliveries(service: SyncService, event_id: str) -> list[tuple[Any, ...]]:
    return await rows(
        service,
        "SELECT target, status, attempts FROM bluebutton_event_deliveries "
        "WHERE event_id = %s ORDER BY target",
        uuid.UUID(event_id),
    )
