"""`Idempotency-Key` on `GET /bluebutton/fhir` through the real app, with the memory store and
with the real Redis: replay, 409 while running, resume after a partial failure, 422 for another
query or token, 400 for a malformed key, and a store that holds neither token nor payload."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import respx

from bluebutton.pull.idempotency_store import (
    IdempotencyRecord,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    State,
)
from tests.factories import (
    AUTH,
    SMALL_LIMIT,
    TOKEN,
    cms_page,
    eob_with_entry_size,
    fhir_response,
    make_eob,
    make_settings,
    record_uuid,
)
from tests.fakes import Connect, Deadlines, HeldCms, HeldConnect, until
from tests.running import open_client
from tests.services import REDIS_URL, redis_unavailable
from tests.wire import diagnostics, outcome_issues

EOB = "ExplanationOfBenefit"
CANARY = "Zanzibar-Quokka-4471"  # a value that only exists inside the claims
REPLAYED = [
    "content-type",
    "content-length",
    "x-lfh-bundle-count",
    "x-lfh-record-uuids",
    "x-lfh-data-record-locations",
    "server-timing",
]

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")

Raw = Callable[[], Awaitable[list[bytes]]]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis" and (reason := redis_unavailable(REDIS_URL)) is not None:
        pytest.skip(reason)
    return str(request.param)


@asynccontextmanager
async def store_for(backend: str) -> AsyncIterator[tuple[IdempotencyStore, Raw]]:
    """The store, and every record as stored (bytes); Redis under a prefix of this test's own,
    whose keys alone are deleted afterwards."""
    if backend == "memory":
        memory = MemoryIdempotencyStore()

        async def memory_raw() -> list[bytes]:
            return memory.raw()

        yield memory, memory_raw
        return
    prefix = f"bluebutton-test:{uuid.uuid4().hex}:"
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)

    async def redis_raw() -> list[bytes]:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        values = [await client.get(key) for key in keys]
        return [value for value in values if isinstance(value, bytes)]

    try:
        yield RedisIdempotencyStore(client, prefix), redis_raw
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@asynccontextmanager
async def idempotent_client(backend: str, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Raw]]:
    async with (
        store_for(backend) as (store, raw),
        open_client(make_settings(**settings), idempotency=store) as c,
    ):
        yield c, raw


async def get_fhir(
    client: httpx.AsyncClient, key: str | None, token: str = TOKEN, **params: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.get("/bluebutton/fhir", params={"resource_type": EOB, **params}, headers=headers)


def claims(count: int, size: int | None = None) -> list[dict[str, Any]]:
    out = [eob_with_entry_size(n, size) if size else make_eob(n) for n in range(count)]
    for claim in out:
        claim["patient"]["display"] = CANARY
    return out


def serve(cms_mock: respx.MockRouter, resources: list[dict[str, Any]]) -> respx.Route:
    return cms_mock.get(EOB).mock(return_value=fhir_response(cms_page(resources, total=len(resources))))


def new_key() -> str:
    return str(uuid.uuid4())


def stored_ids(connect: Connect) -> list[str]:
    return [entry["resource"]["id"] for bundle in connect.stored_bundles for entry in bundle["entry"]]


# ------------------------------------------------------------------------------------------ replay


@pytest.mark.parametrize("return_cms", ["false", "true"])
async def test_a_repeat_after_a_200_is_the_same_answer_and_sends_nothing(
    backend: str, cms_mock: respx.MockRouter, connect: Connect, return_cms: str
) -> None:
    route = serve(cms_mock, claims(3))
    key = new_key()
    async with idempotent_client(backend) as (client, _):
        first = await get_fhir(client, key, return_cms=return_cms)
        again = await get_fhir(client, key, return_cms=return_cms)
    assert first.status_code == again.status_code == 200, again.text
    assert again.content == first.content
    for name in REPLAYED:
        assert again.headers[name] == first.headers[name], name
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert route.call_count == 1
    assert len(connect.route.calls) == 1


async def test_without_a_key_every_request_runs(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    serve(cms_mock, claims(1))
    assert (await get_fhir(client, None)).status_code == 200
    assert (await get_fhir(client, None)).status_code == 200
    assert len(connect.stored) == 2


async def test_the_same_query_spelled_otherwise_is_the_same_request(
    backend: str, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    serve(cms_mock, claims(1))
    key = new_key()
    async with idempotent_client(backend) as (client, _):
        first = await get_fhir(client, key, type="pde,carrier", service_date=["ge2020-01-01", "lt2024-01-01"])
        again = await get_fhir(client, key, type="carrier,pde", service_date=["lt2024-01-01", "ge2020-01-01"])
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert len(connect.stored) == 1


# ----------------------------------------------------------------------------------------- running


async def test_a_repeat_while_the_first_runs_is_409_then_gets_its_answer(
    backend: str, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    held = HeldCms(lambda request: fhir_response(cms_page(claims(2), total=2)))
    cms_mock.get(EOB).mock(side_effect=held)
    key = new_key()
    async with idempotent_client(backend) as (client, _):
        first = asyncio.ensure_future(get_fhir(client, key))
        await until(lambda: bool(held.calls))
        during = await get_fhir(client, key)
        held.released.set()
        done = await first
        after = await get_fhir(client, key)
    assert during.status_code == 409, during.text
    [issue] = outcome_issues(during)
    assert issue["code"] == "conflict"
    assert "still running" in issue["diagnostics"]
    assert during.headers["Retry-After"].isdigit()
    assert len(held.calls) == 1
    assert done.status_code == 200, done.text
    assert after.status_code == 200
    assert after.content == done.content
    assert len(connect.stored) == 1


# --------------------------------------------------------------------------------------- partial


async def test_after_a_partial_failure_a_retry_sends_only_what_is_missing(
    backend: str, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    sent = claims(10, 4000)
    serve(cms_mock, sent)
    refusal = httpx.Response(500, json={"detail": "Object of type Bundle is not JSON serializable"})
    connect.script = [None, None, refusal]  # Bundles 1 and 2 of 5 stored, then 3 refused
    key = new_key()
    async with idempotent_client(backend, lfh_max_bundle_bytes=SMALL_LIMIT) as (client, _):
        failed = await get_fhir(client, key)
        retried = await get_fhir(client, key)
        replayed = await get_fhir(client, key)

    assert failed.status_code == 502, failed.text
    assert "same Idempotency-Key" in diagnostics(failed)
    assert retried.status_code == 200, retried.text
    assert stored_ids(connect) == [claim["id"] for claim in sent]  # each entry stored once
    assert len(connect.route.calls) == 3 + 3
    answer = retried.json()
    assert answer["bundle_count"] == 5
    assert answer["entry_count"] == 10
    assert [b["first_entry"] for b in answer["bundles"]] == [0, 2, 4, 6, 8]
    assert [b["envelope"]["uuid"] for b in answer["bundles"]] == [record_uuid(n) for n in range(1, 6)]
    assert retried.headers["X-LFH-Record-UUIDs"].split(",") == [record_uuid(n) for n in range(1, 6)]
    assert replayed.content == retried.content
    assert len(connect.route.calls) == 6


async def test_after_the_deadline_a_retry_sends_only_what_is_missing(
    backend: str, cms_mock: respx.MockRouter, connect_mock: respx.MockRouter, deadlines: Deadlines
) -> None:
    sent = claims(10, 4000)
    serve(cms_mock, sent)
    connect = HeldConnect(connect_mock, held={3})  # Bundle 3 of 5 never answered
    key = new_key()
    async with idempotent_client(backend, lfh_max_bundle_bytes=SMALL_LIMIT) as (client, _):
        first = asyncio.ensure_future(get_fhir(client, key))
        await asyncio.wait_for(connect.holding.wait(), timeout=60)
        deadlines.pass_now()
        timed_out = await first
        deadlines.started.clear()
        retried = await get_fhir(client, key)
    assert timed_out.status_code == 504, timed_out.text
    assert "same Idempotency-Key" in diagnostics(timed_out)
    assert retried.status_code == 200, retried.text
    # The POST cut off by the deadline never reached this connect, so each entry is stored once.
    assert stored_ids(connect) == [claim["id"] for claim in sent]
    assert connect.posts == 3 + 3
    assert [b["first_entry"] for b in retried.json()["bundles"]] == [0, 2, 4, 6, 8]


async def test_replicas_sharing_redis_run_a_key_once(cms_mock: respx.MockRouter, connect: Connect) -> None:
    if (reason := redis_unavailable(REDIS_URL)) is not None:
        pytest.skip(reason)
    held = HeldCms(lambda request: fhir_response(cms_page(claims(2), total=2)))
    cms_mock.get(EOB).mock(side_effect=held)
    key = new_key()
    prefix = f"bluebutton-test:{uuid.uuid4().hex}:"
    redis_a, redis_b = (aioredis.Redis.from_url(REDIS_URL, socket_timeout=5) for _ in range(2))
    async with (
        open_client(make_settings(), idempotency=RedisIdempotencyStore(redis_a, prefix)) as replica_a,
        open_client(make_settings(), idempotency=RedisIdempotencyStore(redis_b, prefix)) as replica_b,
    ):
        first = asyncio.ensure_future(get_fhir(replica_a, key))
        await until(lambda: bool(held.calls))
        during = await get_fhir(replica_b, key)
        held.released.set()
        done = await first
        after = await get_fhir(replica_b, key)
    assert during.status_code == 409, during.text
    assert done.status_code == 200, done.text
    assert after.status_code == 200
    assert after.headers["Idempotent-Replayed"] == "true"
    assert after.content == done.content
    assert len(held.calls) == 1
    assert len(connect.stored) == 1
    keys = [key async for key in redis_a.scan_iter(match=prefix + "*")]
    await redis_a.delete(*keys)
    await redis_a.aclose()
    await redis_b.aclose()


async def test_a_failure_that_stored_nothing_frees_the_key(
    backend: str, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    serve(cms_mock, claims(2))
    connect.script = [httpx.Response(500, json={"detail": "Kafka is down"})]
    key = new_key()
    async with idempotent_client(backend) as (client, raw):
        failed = await get_fhir(client, key)
        assert await raw() == []
        retried = await get_fhir(client, key)
    assert failed.status_code == 502
    assert retried.status_code == 200, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert len(connect.stored) == 1


# ------------------------------------------------------------------------------------------ misuse


async def test_the_key_with_another_query_or_token_is_422(
    backend: str, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    route = serve(cms_mock, claims(1))
    key = new_key()
    async with idempotent_client(backend) as (client, _):
        assert (await get_fhir(client, key)).status_code == 200
        other_query = await get_fhir(client, key, type="pde")
        other_token = await get_fhir(client, key, token="someone-else-9Lr2Vw8Kz4")
        other_answer = await get_fhir(client, key, return_cms="true")
    for response, says in [
        (other_query, "other query parameters"),
        (other_token, "another access token"),
        (other_answer, "other query parameters"),
    ]:
        assert response.status_code == 422, response.text
        [issue] = outcome_issues(response)
        assert issue["code"] == "business-rule"
        assert says in issue["diagnostics"]
        assert "new key" in issue["diagnostics"]
    assert route.call_count == 1
    assert len(connect.route.calls) == 1


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param('""', id="empty-quoted"),
        pytest.param("a" * 256, id="too-long"),
        pytest.param("two words", id="space"),
        pytest.param("a;b", id="semicolon"),
        pytest.param('"abc', id="unbalanced-quote"),
        pytest.param("caf\u00e9", id="not-ascii"),
    ],
)
async def test_a_malformed_key_is_400_before_any_upstream_call(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, key: str
) -> None:
    route = serve(cms_mock, claims(1))
    response = await client.get(
        "/bluebutton/fhir",
        params={"resource_type": EOB},
        headers=[
            (b"Authorization", AUTH["Authorization"].encode()),
            (b"Idempotency-Key", key.encode("latin-1")),
        ],
    )
    assert response.status_code == 400, response.text
    [issue] = outcome_issues(response)
    assert issue["code"] == "invalid"
    assert "Idempotency-Key" in issue["diagnostics"]
    assert "1-255 characters" in issue["diagnostics"]
    assert not route.called
    assert not connect.route.calls


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(str(uuid.UUID(int=7)), id="uuid"),
        pytest.param('"' + "k" * 255 + '"', id="quoted-255"),
        pytest.param("a-Z_0.9:~+/=", id="every-allowed-symbol"),
    ],
)
async def test_well_formed_keys_are_accepted(
    backend: str, cms_mock: respx.MockRouter, connect: Connect, key: str
) -> None:
    serve(cms_mock, claims(1))
    async with idempotent_client(backend) as (client, _):
        assert (await get_fhir(client, key)).status_code == 200
        assert (await get_fhir(client, key)).headers["Idempotent-Replayed"] == "true"
    assert len(connect.stored) == 1


# ------------------------------------------------------------------------------------------- store


async def test_the_store_holds_neither_token_nor_payload(
    backend: str, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    serve(cms_mock, claims(10, 4000))
    # The first pull's 5 Bundles stored; the second's first stored, its second refused.
    connect.script = [None] * 6 + [httpx.Response(500, json={"detail": "Kafka is down"})]
    async with idempotent_client(backend, lfh_max_bundle_bytes=SMALL_LIMIT) as (client, raw):
        done = await get_fhir(client, new_key(), return_cms="true")
        partial = await get_fhir(client, new_key())
        records = await raw()
    assert done.status_code == 200, done.text
    assert partial.status_code == 502, partial.text
    assert CANARY in done.text
    assert len(records) == 2
    states = sorted(orjson.loads(record)["state"] for record in records)
    assert states == ["done", "partial"]
    for record in records:
        assert TOKEN.encode() not in record
        assert CANARY.encode() not in record
        assert b"ExplanationOfBenefit" not in record
        assert b"pde--" not in record and b"carrier--" not in record


async def test_openapi_documents_the_header_and_its_answers(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/bluebutton/fhir"]["get"]
    [parameter] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert parameter["in"] == "header"
    assert parameter["required"] is False
    for words in ("409", "422", "replayed", "only the entries not stored", "24 h"):
        assert words in parameter["description"]
    assert {"400", "409", "422", "503"} <= set(operation["responses"])


# ----------------------------------------------------------------------------- the stores alone


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def clocked_store(backend: str, clock: Clock) -> AsyncIterator[IdempotencyStore]:
    if backend == "memory":
        yield MemoryIdempotencyStore(clock)
        return
    prefix = f"bluebutton-test:{uuid.uuid4().hex}:"
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield RedisIdempotencyStore(client, prefix, clock)
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def record(
    state: State, lease_until: int = 0, sealed: bytes = b"", token: str = "t" * 64
) -> IdempotencyRecord:
    return IdempotencyRecord(state, token, "q" * 64, lease_until, sealed)


async def test_a_run_is_claimed_once_and_a_dead_one_taken_over_with_its_progress(backend: str) -> None:
    clock = Clock()
    async with clocked_store(backend, clock) as store:
        lease = int(clock.now) + 330
        assert await store.claim("k", record("running", lease), 86_400) == (True, None)
        assert await store.claim("k", record("running", lease + 5), 86_400) == (
            False,
            record("running", lease),
        )
        await store.finish("k", record("partial", sealed=b"progress"), 86_400)
        assert await store.claim("k", record("running", lease, token="x" * 64), 86_400) == (
            False,
            record("partial", sealed=b"progress"),
        )
        assert await store.claim("k", record("running", lease), 86_400) == (
            True,
            record("partial", sealed=b"progress"),
        )
        clock.now = lease  # the run never finished: its lease is over
        claimed, previous = await store.claim("k", record("running", lease + 330), 86_400)
        assert claimed
        assert previous == record("running", lease, sealed=b"progress")
        await store.release("k")
        assert await store.claim("k", record("running", lease), 86_400) == (True, None)


async def test_a_memory_record_expires_after_its_ttl() -> None:
    clock = Clock()
    store = MemoryIdempotencyStore(clock)
    await store.finish("old", record("done", sealed=b"answer"), 60)
    clock.now += 30
    await store.finish("new", record("done", sealed=b"answer"), 60)
    assert (await store.claim("old", record("running", 1), 60))[0] is False
    clock.now += 31
    assert await store.claim("old", record("running", 1), 60) == (True, None)
    assert len(store.raw()) == 2  # "new" is still kept, "old" is the new run
