"""Where `Idempotency-Key` records live: in memory for one process, or in Redis for replicas.

A record holds hashes (of the caller's token and of the normalised query), a state and a sealed
blob the store cannot read (`bluebutton/idempotency.py` encrypts it with a key only the caller's
token yields). Claiming is atomic (a Redis Lua script; in memory no `await` between read and
write), so of two replicas receiving the same key at once exactly one runs the pull.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bluebutton.errors import IdempotencyStoreError

State = Literal["running", "partial", "done"]


@dataclass(frozen=True)
class IdempotencyRecord:
    """`running` until `lease_until` (epoch seconds; past it the run is presumed dead and may be
    taken over), `partial` (some Bundles stored, a retry sends the rest) or `done` (replayed)."""

    state: State
    token_hash: str
    query_hash: str
    lease_until: int = 0
    sealed: bytes = b""

    def claimable_by(self, token_hash: str, query_hash: str, now: float) -> bool:
        if (self.token_hash, self.query_hash) != (token_hash, query_hash):
            return False
        return self.state == "partial" or (self.state == "running" and self.lease_until <= now)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "state": self.state,
                "token": self.token_hash,
                "query": self.query_hash,
                "until": self.lease_until,
                "sealed": base64.b64encode(self.sealed).decode(),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> IdempotencyRecord:
        value = orjson.loads(raw)
        return cls(
            value["state"],
            value["token"],
            value["query"],
            int(value["until"]),
            base64.b64decode(value["sealed"]),
        )


class IdempotencyStore(Protocol):
    async def claim(
        self, key: str, running: IdempotencyRecord, ttl_seconds: int
    ) -> tuple[bool, IdempotencyRecord | None]:
        """Atomically start a run under `key`: when the key is unknown, or `partial` (or a dead
        run's) with the same hashes, store `running` (keeping the sealed progress) and answer
        (True, what was there). Otherwise change nothing and answer (False, the record)."""
        ...

    async def finish(self, key: str, record: IdempotencyRecord, ttl_seconds: int) -> None: ...

    async def release(self, key: str) -> None:
        """Forget the key: the run stored nothing, so running it again cannot duplicate."""
        ...

    async def aclose(self) -> None: ...


class MemoryIdempotencyStore:
    """Single-process store. Every write moves its key to the end with the same TTL, so the
    dict stays in expiry order and expired records are dropped from its front in O(1) each."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._items: dict[str, tuple[IdempotencyRecord, float]] = {}

    def _get(self, key: str, now: float) -> IdempotencyRecord | None:
        while self._items:
            oldest = next(iter(self._items))
            if self._items[oldest][1] > now:
                break
            del self._items[oldest]
        item = self._items.get(key)
        return None if item is None else item[0]

    def _put(self, key: str, record: IdempotencyRecord, ttl_seconds: int) -> None:
        self._items.pop(key, None)
        self._items[key] = (record, self._clock() + ttl_seconds)

    async def claim(
        self, key: str, running: IdempotencyRecord, ttl_seconds: int
    ) -> tuple[bool, IdempotencyRecord | None]:
        now = self._clock()
        previous = self._get(key, now)
        if previous is not None and not previous.claimable_by(running.token_hash, running.query_hash, now):
            return False, previous
        self._put(key, running if previous is None else replace(running, sealed=previous.sealed), ttl_seconds)
        return True, previous

    async def finish(self, key: str, record: IdempotencyRecord, ttl_seconds: int) -> None:
        self._put(key, record, ttl_seconds)

    async def release(self, key: str) -> None:
        self._items.pop(key, None)

    def raw(self) -> list[bytes]:
        """Every record as it would be stored elsewhere (tests look for leaks in it)."""
        return [record.to_json() for record, _ in self._items.values()]

    async def aclose(self) -> None:
        self._items.clear()


# KEYS[1] key; ARGV: running record (JSON), token hash, query hash, now, ttl. cjson rewrites the
# taken-over record with the new state and lease, its sealed progress untouched.
_CLAIM = """
local raw = redis.call('GET', KEYS[1])
if raw then
  local r = cjson.decode(raw)
  local dead = r['state'] == 'running' and tonumber(r['until']) <= tonumber(ARGV[4])
  if r['token'] ~= ARGV[2] or r['query'] ~= ARGV[3] or not (r['state'] == 'partial' or dead) then
    return {0, raw}
  end
  local new = cjson.decode(ARGV[1])
  r['state'] = 'running'
  r['until'] = new['until']
  redis.call('SET', KEYS[1], cjson.encode(r), 'EX', ARGV[5])
  return {1, raw}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
return {1, ''}
"""


class RedisIdempotencyStore:
    """Shared store for replicas; records expire by Redis TTL. Keys are digests of the
    Idempotency-Key, so a Redis dump shows no caller's key."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "bluebutton:idempotency:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self._clock = clock
        self._claim = client.register_script(_CLAIM)

    def _key(self, key: str) -> str:
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()

    async def claim(
        self, key: str, running: IdempotencyRecord, ttl_seconds: int
    ) -> tuple[bool, IdempotencyRecord | None]:
        args: list[bytes | str | int] = [
            running.to_json(),
            running.token_hash,
            running.query_hash,
            int(self._clock()),
            ttl_seconds,
        ]
        try:
            claimed, raw = await self._claim(keys=[self._key(key)], args=args)
        except RedisError as e:
            raise _unavailable(e) from e
        return bool(claimed), IdempotencyRecord.from_json(raw) if raw else None

    async def finish(self, key: str, record: IdempotencyRecord, ttl_seconds: int) -> None:
        try:
            await self._client.set(self._key(key), record.to_json(), ex=ttl_seconds)
        except RedisError as e:
            raise _unavailable(e) from e

    async def release(self, key: str) -> None:
        try:
            await self._client.delete(self._key(key))
        except RedisError as e:
            raise _unavailable(e) from e

    async def aclose(self) -> None:
        await self._client.aclose()


def _unavailable(error: RedisError) -> IdempotencyStoreError:
    return IdempotencyStoreError(
        f"The Idempotency-Key store (BLUEBUTTON_STATE_STORE, Redis) failed ({type(error).__name__}); "
        "nothing was sent to LinuxForHealth connect. Retry with the same key when Redis is back"
    )
