"""The pending-authorization stores: single use, expiry, atomic take; Redis against the real server."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pydantic
import pytest
import redis.asyncio as aioredis

from bluebutton.cms.pending import (
    MemoryPendingStore,
    PendingAuthorization,
    RedisPendingStore,
)
from bluebutton.errors import PendingStoreFullError
from tests.factories import AUTHORIZE, JSON_ACCEPT, make_settings
from tests.running import open_client
from tests.services import REDIS_URL, redis_unavailable


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def pending(state: str = "state-" + "s" * 40, verifier: str = "v" * 86) -> PendingAuthorization:
    return PendingAuthorization(state=state, verifier=verifier, created_at=1_700_000_000.0)


# --- MemoryPendingStore -------------------------------------------------------------------------------------


async def test_memory_take_returns_what_was_put_once() -> None:
    store = MemoryPendingStore(clock=FakeClock())
    item = pending()
    await store.put(item, 600)

    assert await store.take(item.state) == item
    assert await store.take(item.state) is None


async def test_memory_unknown_state_is_none() -> None:
    store = MemoryPendingStore(clock=FakeClock())
    await store.put(pending("known-" + "k" * 40), 600)

    assert await store.take("unknown-" + "u" * 40) is None
    assert await store.take("known-" + "k" * 40) is not None


@pytest.mark.parametrize(
    ("elapsed", "found"),
    [
        pytest.param(0, True, id="fresh"),
        pytest.param(599.9, True, id="just-before-ttl"),
        pytest.param(600.1, False, id="just-after-ttl"),
        pytest.param(3600, False, id="long-after"),
    ],
)
async def test_memory_expiry_follows_the_clock(elapsed: float, found: bool) -> None:
    clock = FakeClock()
    store = MemoryPendingStore(clock=clock)
    item = pending()
    await store.put(item, 600)

    clock.now += elapsed

    assert (await store.take(item.state) == item) is found
    assert await store.take(item.state) is None


async def test_memory_expired_items_do_not_block_new_ones() -> None:
    clock = FakeClock()
    store = MemoryPendingStore(clock=clock)
    await store.put(pending("old-" + "o" * 40), 30)
    clock.now += 31
    fresh = pending("new-" + "n" * 40)
    await store.put(fresh, 30)

    assert await store.take("old-" + "o" * 40) is None
    assert await store.take(fresh.state) == fresh


async def test_memory_concurrent_takes_give_it_to_one() -> None:
    store = MemoryPendingStore(clock=FakeClock())
    item = pending()
    await store.put(item, 600)

    results = await asyncio.gather(*(store.take(item.state) for _ in range(10)))

    assert [r for r in results if r is not None] == [item]


async def test_memory_aclose_forgets_everything() -> None:
    store = MemoryPendingStore(clock=FakeClock())
    item = pending()
    await store.put(item, 600)

    await store.aclose()

    assert await store.take(item.state) is None


# --- the cap (BLUEBUTTON_STATE_MAX_PENDING) ----------------------------------------------------------


def states(count: int, tag: str = "s") -> list[PendingAuthorization]:
    return [pending(f"{tag}{n:04d}-" + "x" * 40) for n in range(count)]


async def test_memory_cap_refuses_with_retry_after_until_the_oldest_expires() -> None:
    clock = FakeClock()
    store = MemoryPendingStore(clock=clock, max_pending=3)
    first, *rest = states(3)
    await store.put(first, 600)
    clock.now += 100.5
    for item in rest:
        await store.put(item, 600)

    with pytest.raises(PendingStoreFullError) as refused:
        await store.put(pending("one-too-many-" + "m" * 40), 600)

    assert refused.value.status_code == 503
    assert refused.value.headers == {"Retry-After": "500"}  # the first expires in 499.5 s
    assert "BLUEBUTTON_STATE_MAX_PENDING" in refused.value.message
    assert all([await store.take(item.state) == item for item in [first, *rest]])


async def test_memory_expired_entries_free_the_cap() -> None:
    clock = FakeClock()
    store = MemoryPendingStore(clock=clock, max_pending=2)
    old = states(2, "old")
    for item in old:
        await store.put(item, 600)
    with pytest.raises(PendingStoreFullError):
        await store.put(pending("early-" + "e" * 40), 600)

    clock.now += 600  # both expire now (an item lives while now < put time + TTL)
    fresh = states(2, "new")
    for item in fresh:
        await store.put(item, 600)

    assert [await store.take(item.state) for item in old] == [None, None]
    assert [await store.take(item.state) for item in fresh] == fresh


async def test_memory_take_frees_a_slot() -> None:
    store = MemoryPendingStore(clock=FakeClock(), max_pending=1)
    first, second = states(2)
    await store.put(first, 600)
    with pytest.raises(PendingStoreFullError):
        await store.put(second, 600)

    assert await store.take(first.state) == first
    await store.put(second, 600)
    assert await store.take(second.state) == second


async def test_memory_retry_after_is_at_least_one_second() -> None:
    clock = FakeClock()
    store = MemoryPendingStore(clock=clock, max_pending=1)
    first, second = states(2)
    await store.put(first, 600)
    clock.now += 599.9

    with pytest.raises(PendingStoreFullError) as refused:
        await store.put(second, 600)
    assert refused.value.headers == {"Retry-After": "1"}


def test_max_pending_setting_defaults_to_10_000_and_refuses_zero() -> None:
    assert make_settings().state_max_pending == 10_000
    with pytest.raises(pydantic.ValidationError, match="state_max_pending"):
        make_settings(state_max_pending=0)


async def test_authorize_at_the_cap_is_503_with_retry_after() -> None:
    # The store the app opens from the settings, not one handed in.
    async with open_client(make_settings(state_max_pending=2)) as client:
        for _ in range(2):
            accepted = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})
            assert accepted.status_code == 200, accepted.text

        refused = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})

    assert refused.status_code == 503
    assert 590 <= int(refused.headers["Retry-After"]) <= 600
    body = refused.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "throttled"
    assert "2 authorizations are already waiting" in body["issue"][0]["diagnostics"]


# --- the setting (the stores it opens: tests/test_resources.py) -------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("postgres://db/0", id="postgres"),
        pytest.param("127.0.0.1:6379", id="no-scheme"),
        pytest.param("Memory", id="wrong-case"),
    ],
)
def test_state_store_setting_refuses_unknown_stores(value: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="state_store"):
        make_settings(state_store=value)


@pytest.mark.parametrize(
    "value", [pytest.param("memory", id="memory"), pytest.param("rediss://cache:6380/2", id="rediss")]
)
def test_state_store_setting_accepts_memory_and_redis(value: str) -> None:
    assert make_settings(state_store=value).state_store == value


# --- RedisPendingStore against the real Redis ---------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    reason = redis_unavailable(REDIS_URL)
    if reason is not None:
        pytest.skip(reason)
    return REDIS_URL


def prefixed_store(client: aioredis.Redis, prefix: str, max_pending: int = 10_000) -> RedisPendingStore:
    class TestRedisStore(RedisPendingStore):
        PREFIX = prefix

    return TestRedisStore(client, max_pending=max_pending)


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


@asynccontextmanager
async def redis_store(
    url: str, max_pending: int = 10_000
) -> AsyncIterator[tuple[RedisPendingStore, aioredis.Redis]]:
    """A RedisPendingStore writing under a prefix of its own, and a client to look at Redis directly.

    Only this prefix's keys are deleted afterwards (never FLUSHALL/FLUSHDB).
    """
    prefix = f"bluebutton-test:{uuid.uuid4().hex}:"
    client = connect(url)
    try:
        yield prefixed_store(client, prefix, max_pending), client
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def unique_state() -> str:
    return "state-" + uuid.uuid4().hex + uuid.uuid4().hex


async def test_redis_take_returns_what_was_put_once(redis_url: str) -> None:
    async with redis_store(redis_url) as (store, _):
        item = pending(unique_state())
        await store.put(item, 600)

        assert await store.take(item.state) == item
        assert await store.take(item.state) is None


async def test_redis_unknown_state_is_none(redis_url: str) -> None:
    async with redis_store(redis_url) as (store, _):
        assert await store.take(unique_state()) is None


async def test_redis_key_has_a_ttl_and_hides_the_state(redis_url: str) -> None:
    async with redis_store(redis_url) as (store, client):
        item = pending(unique_state())
        await store.put(item, 600)

        keys = [key.decode() async for key in client.scan_iter(match=store.PREFIX + "*")]
        digest = store.PREFIX + hashlib.sha256(item.state.encode()).hexdigest()
        assert sorted(keys) == sorted([digest, store.index_key])
        assert 590 <= await client.ttl(digest) <= 600
        raw = await client.get(digest)
        assert isinstance(raw, bytes) and item.state.encode() not in raw
        # The index names the digest, never the state, and expires with the last state.
        assert await client.zrange(store.index_key, 0, -1) == [digest.encode()]
        assert 590 <= await client.ttl(store.index_key) <= 600


async def test_redis_expired_state_is_gone(redis_url: str) -> None:
    async with redis_store(redis_url) as (store, client):
        item = pending(unique_state())
        await store.put(item, 600)
        key = store.PREFIX + hashlib.sha256(item.state.encode()).hexdigest()

        await client.pexpire(key, 1)  # let Redis expire it now rather than in ten minutes
        for _ in range(1000):
            if not await client.exists(key):
                break
            await asyncio.sleep(0.005)

        assert await store.take(item.state) is None


async def test_redis_put_does_not_overwrite_a_pending_state(redis_url: str) -> None:
    async with redis_store(redis_url) as (store, _):
        state = unique_state()
        first = pending(state, verifier="first-" + "f" * 60)
        await store.put(first, 600)
        await store.put(pending(state, verifier="second-" + "s" * 60), 600)

        assert await store.take(state) == first


async def test_redis_concurrent_takes_give_it_to_one(redis_url: str) -> None:
    async with redis_store(redis_url) as (store, _):
        item = pending(unique_state())
        await store.put(item, 600)

        results = await asyncio.gather(*(store.take(item.state) for _ in range(10)))

        assert [r for r in results if r is not None] == [item]


async def test_redis_stores_with_separate_connections_share_states(redis_url: str) -> None:
    # Two replicas each open their own connection pool on the same Redis.
    async with redis_store(redis_url) as (store, _):
        other = prefixed_store(connect(redis_url), store.PREFIX)
        try:
            item = pending(unique_state())
            await store.put(item, 600)

            assert await other.take(item.state) == item
            assert await store.take(item.state) is None
        finally:
            await other.aclose()


async def test_redis_cap_refuses_with_retry_after(redis_url: str) -> None:
    async with redis_store(redis_url, max_pending=2) as (store, _):
        items = [pending(unique_state()) for _ in range(2)]
        for item in items:
            await store.put(item, 600)

        with pytest.raises(PendingStoreFullError) as refused:
            await store.put(pending(unique_state()), 600)

        assert 590 <= int(refused.value.headers["Retry-After"]) <= 600
        assert [await store.take(item.state) for item in items] == items


async def test_redis_cap_is_shared_by_replicas_and_freed_by_take(redis_url: str) -> None:
    async with redis_store(redis_url, max_pending=1) as (store, _):
        other = prefixed_store(connect(redis_url), store.PREFIX, max_pending=1)
        try:
            first, second = pending(unique_state()), pending(unique_state())
            await store.put(first, 600)
            with pytest.raises(PendingStoreFullError):
                await other.put(second, 600)

            assert await other.take(first.state) == first
            await other.put(second, 600)
            assert await store.take(second.state) == second
        finally:
            await other.aclose()


async def test_redis_expired_entries_free_the_cap(redis_url: str) -> None:
    async with redis_store(redis_url, max_pending=1) as (store, client):
        first, second = pending(unique_state()), pending(unique_state())
        await store.put(first, 600)
        with pytest.raises(PendingStoreFullError):
            await store.put(second, 600)

        # Expire the first now rather than in ten minutes: its key and its index entry.
        member = store.PREFIX + hashlib.sha256(first.state.encode()).hexdigest()
        assert await client.zscore(store.index_key, member) is not None
        await client.zadd(store.index_key, {member: 0})
        await client.delete(member)

        await store.put(second, 600)
        assert await store.take(first.state) is None
        assert await store.take(second.state) == second
