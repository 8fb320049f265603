"""Pending authorizations (state → PKCE verifier), kept server-side between authorize and callback.

The state is consumed atomically, so a replayed or raced callback finds nothing: in memory for one
process, or in Redis (`SET ... EX` then `GETDEL`) so `/authorize` and the callback can land on
different replicas. Nothing is bound to a cookie, so the flow works when the browser's host for
Swagger (127.0.0.1) differs from the registered callback host (localhost).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis.asyncio as aioredis


@dataclass(frozen=True)
class PendingAuthorization:
    state: str
    verifier: str
    created_at: float
    sync: bool = False  # authorize?sync=true: the callback stores the grant instead of handing it out


class PendingStore(Protocol):
    async def put(self, pending: PendingAuthorization, ttl_seconds: int) -> None: ...

    async def take(self, state: str) -> PendingAuthorization | None:
        """Remove and return the pending authorization, or None if unknown, expired or used."""
        ...

    async def aclose(self) -> None: ...


class MemoryPendingStore:
    """Single-process store; a dict pop cannot interleave with another coroutine."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[PendingAuthorization, float]] = {}

    async def put(self, pending: PendingAuthorization, ttl_seconds: int) -> None:
        now = self._clock()
        self._items = {k: v for k, v in self._items.items() if v[1] > now}
        self._items[pending.state] = (pending, now + ttl_seconds)

    async def take(self, state: str) -> PendingAuthorization | None:
        item = self._items.pop(state, None)
        if item is None or item[1] <= self._clock():
            return None
        return item[0]

    async def aclose(self) -> None:
        self._items.clear()


class RedisPendingStore:
    """Shared store for several replicas; keys expire by Redis TTL."""

    PREFIX = "bluebutton:pending:"

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> RedisPendingStore:
        return cls(aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def _key(self, state: str) -> str:
        # The key is a digest, so a Redis dump or MONITOR does not show usable states.
        return self.PREFIX + hashlib.sha256(state.encode()).hexdigest()

    async def put(self, pending: PendingAuthorization, ttl_seconds: int) -> None:
        value = orjson.dumps(
            {"verifier": pending.verifier, "created_at": pending.created_at, "sync": pending.sync}
        )
        await self._client.set(self._key(pending.state), value, ex=ttl_seconds, nx=True)

    async def take(self, state: str) -> PendingAuthorization | None:
        raw = await self._client.getdel(self._key(state))
        if raw is None:
            return None
        value = orjson.loads(raw)
        return PendingAuthorization(state, value["verifier"], value["created_at"], bool(value.get("sync")))

    async def aclose(self) -> None:
        await self._client.aclose()


def open_pending_store(url: str) -> PendingStore:
    """The store `BLUEBUTTON_STATE_STORE` names: `memory`, or a Redis URL."""
    if url == "memory":
        return MemoryPendingStore()
    return RedisPendingStore.from_url(url)
