"""Pending authorizations (state → PKCE verifier), kept server-side between authorize and callback.

The state is consumed atomically, so a replayed or raced callback finds nothing: in memory for one
process, or in Redis (`SET ... PX NX` then `GETDEL`) so `/authorize` and the callback can land on
different replicas. Nothing is bound to a cookie, so the flow works when the browser's host for
Swagger (127.0.0.1) differs from the registered callback host (localhost). `/authorize` needs no
credentials, so both stores hold at most `BLUEBUTTON_STATE_MAX_PENDING` states and refuse more
(503 with `Retry-After`) rather than grow.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis.asyncio as aioredis

from bluebutton.errors import PendingStoreFullError


@dataclass(frozen=True)
class PendingAuthorization:
    state: str
    verifier: str
    created_at: float
    sync: bool = False  # authorize?sync=true: the callback stores the grant instead of handing it out
    version: int = 2  # the Blue Button API version the code is exchanged on (bb2-v3.md §8 item 1)


MAX_PENDING = 10_000


def store_full(max_pending: int, seconds_to_free: float) -> PendingStoreFullError:
    """The refusal at the cap; a slot frees up when the oldest pending authorization expires."""
    retry_after = max(1, math.ceil(seconds_to_free))
    return PendingStoreFullError(
        f"{max_pending} authorizations are already waiting for their callback "
        f"(BLUEBUTTON_STATE_MAX_PENDING); try again in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


class PendingStore(Protocol):
    async def put(self, pending: PendingAuthorization, ttl_seconds: int) -> None: ...

    async def take(self, state: str) -> PendingAuthorization | None:
        """Remove and return the pending authorization, or None if unknown, expired or used."""
        ...

    async def aclose(self) -> None: ...


class MemoryPendingStore:
    """Single-process store; a dict pop cannot interleave with another coroutine.

    Items sit in insertion order, which is expiry order since every put uses the one
    `BLUEBUTTON_STATE_TTL_SECONDS` on a monotonic clock: expired items are dropped from the front,
    so put and take cost O(1) however many are pending. At `max_pending` a put is refused (503 with
    `Retry-After`) instead of growing without bound: `/authorize` needs no credentials.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, max_pending: int = MAX_PENDING
    ) -> None:
        self._clock = clock
        self._max = max_pending
        self._items: OrderedDict[str, tuple[PendingAuthorization, float]] = OrderedDict()

    def _drop_expired(self, now: float) -> None:
        items = self._items
        while items:
            state, (_, expires) = next(iter(items.items()))
            if expires > now:
                break
            del items[state]

    async def put(self, pending: PendingAuthorization, ttl_seconds: int) -> None:
        now = self._clock()
        self._drop_expired(now)
        self._items.pop(pending.state, None)
        if len(self._items) >= self._max:
            _, oldest_expires = next(iter(self._items.values()))
            raise store_full(self._max, oldest_expires - now)
        self._items[pending.state] = (pending, now + ttl_seconds)

    async def take(self, state: str) -> PendingAuthorization | None:
        item = self._items.pop(state, None)
        if item is None or item[1] <= self._clock():
            return None
        return item[0]

    async def aclose(self) -> None:
        self._items.clear()


# One atomic step on Redis's clock (shared by the replicas): drop expired entries from the index,
# refuse at the cap (answering the milliseconds until the oldest expires), else store the state.
# KEYS: the index (sorted set of state keys by expiry, ms), the state's key.
# ARGV: the value, the TTL in seconds, the cap. Returns -1 when stored.
_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(0, tonumber(oldest[2]) - now)
end
if redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl, 'NX') then
  redis.call('ZADD', KEYS[1], now + ttl, KEYS[2])
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
return -1
"""


class RedisPendingStore:
    """Shared store for several replicas; keys expire by Redis TTL.

    The cap counts the states of all replicas together: an index (a sorted set of the state keys
    by expiry, itself expiring when nothing is pending) is kept beside them, in the same atomic
    script as the `SET`, so the count is exact without scanning.
    """

    PREFIX = "bluebutton:pending:"

    def __init__(self, client: aioredis.Redis, *, max_pending: int = MAX_PENDING) -> None:
        self._client = client
        self._max = max_pending
        self._put = client.register_script(_PUT)

    @property
    def index_key(self) -> str:
        return self.PREFIX + "index"

    def _key(self, state: str) -> str:
        # The key is a digest, so a Redis dump or MONITOR does not show usable states.
        return self.PREFIX + hashlib.sha256(state.encode()).hexdigest()

    async def put(self, pending: PendingAuthorization, ttl_seconds: int) -> None:
        value = orjson.dumps(
            {
                "verifier": pending.verifier,
                "created_at": pending.created_at,
                "sync": pending.sync,
                "version": pending.version,
            }
        )
        keys = [self.index_key, self._key(pending.state)]
        wait_ms = int(await self._put(keys=keys, args=[value, ttl_seconds, self._max]))
        if wait_ms >= 0:
            raise store_full(self._max, wait_ms / 1000)

    async def take(self, state: str) -> PendingAuthorization | None:
        key = self._key(state)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.getdel(key)
            pipe.zrem(self.index_key, key)
            raw, _ = await pipe.execute()
        if raw is None:
            return None
        value = orjson.loads(raw)
        return PendingAuthorization(
            state,
            value["verifier"],
            value["created_at"],
            bool(value.get("sync")),
            int(value.get("version", 2)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
