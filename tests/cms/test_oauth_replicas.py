"""Two replicas sharing the pending-authorization store in the real Redis at 127.0.0.1:6379.

Each replica is its own `create_app(settings)` with its own lifespan, Redis pool and CMS client;
only Redis is shared. `/authorize` on one and the callback on the other must succeed exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
import redis.asyncio as aioredis
import respx

from bluebutton.settings import Settings
from tests.factories import AUTHORIZE, BROWSER_ACCEPT, CALLBACK, JSON_ACCEPT, make_settings, token_body
from tests.fakes import HeldCms, until
from tests.running import open_client
from tests.services import REDIS_URL, redis_key, redis_unavailable
from tests.wire import form_of, query_of, s256


@pytest.fixture
def settings() -> Settings:
    reason = redis_unavailable(REDIS_URL)
    if reason is not None:
        pytest.skip(reason)
    return make_settings(state_store=REDIS_URL)


@pytest.fixture
def cms(settings: Settings) -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=settings.cms_origin, assert_all_called=False) as router:
        router.post("/v2/o/token/", name="token").mock(
            side_effect=lambda request: httpx.Response(200, json=token_body())
        )
        yield router


@asynccontextmanager
async def replicas(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two independent app instances; pending states they leave behind are deleted one by one."""
    states: list[str] = []

    async def remember(response: httpx.Response) -> None:
        if response.request.url.path == AUTHORIZE and response.status_code in (200, 307):
            await response.aread()
            url = response.headers.get("location") or response.json()["authorize_url"]
            states.append(query_of(url)["state"])

    async with (
        open_client(settings, base_url="http://replica-a") as a,
        open_client(settings, base_url="http://replica-b") as b,
    ):
        for client in (a, b):
            client.event_hooks["response"].append(remember)
        try:
            yield a, b
        finally:
            redis = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
            try:
                if states:
                    await redis.delete(*(redis_key(s) for s in states))
            finally:
                await redis.aclose()


async def authorize(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.get(AUTHORIZE, headers={"Accept": JSON_ACCEPT})
    assert response.status_code == 200, response.text
    return query_of(response.json()["authorize_url"])


async def call_back(client: httpx.AsyncClient, state: str, code: str = "code-1") -> httpx.Response:
    return await client.get(CALLBACK, params={"code": code, "state": state})


@pytest.mark.parametrize(
    "second_on",
    [
        pytest.param("a", id="replay-on-authorizing-replica"),
        pytest.param("b", id="replay-on-callback-replica"),
    ],
)
async def test_authorize_on_one_replica_callback_on_the_other_once(
    settings: Settings, cms: respx.MockRouter, second_on: str
) -> None:
    async with replicas(settings) as (a, b):
        query = await authorize(a)
        ttl = await _ttl(query["state"])

        first = await call_back(b, query["state"], code="code-first")
        second = await call_back({"a": a, "b": b}[second_on], query["state"], code="code-second")

    assert 0 < ttl <= settings.state_ttl_seconds
    assert first.status_code == 200, first.text
    assert first.json()["access_token"]
    assert second.status_code == 400
    token = cms.routes["token"]
    assert token.call_count == 1
    form = form_of(token.calls.last.request)
    assert form["code"] == "code-first"
    # Replica B exchanged with the verifier replica A made: it came through Redis.
    assert s256(form["code_verifier"]) == query["code_challenge"]


async def test_browser_flow_across_replicas(settings: Settings, cms: respx.MockRouter) -> None:
    async with replicas(settings) as (a, b):
        redirect = await a.get(AUTHORIZE, headers={"Accept": BROWSER_ACCEPT})
        state = query_of(redirect.headers["location"])["state"]

        page = await b.get(CALLBACK, params={"code": "c", "state": state}, headers={"Accept": BROWSER_ACCEPT})

    assert redirect.status_code == 307
    assert page.status_code == 200
    assert 'id="access-token"' in page.text
    assert cms.routes["token"].call_count == 1


async def test_racing_callbacks_on_both_replicas_exchange_once(
    settings: Settings, cms: respx.MockRouter
) -> None:
    held = HeldCms(lambda request: httpx.Response(200, json=token_body()))
    cms.routes["token"].mock(side_effect=held)
    async with replicas(settings) as (a, b):
        query = await authorize(a)

        tasks = [asyncio.create_task(call_back(client, query["state"])) for client in (a, b)]
        await until(lambda: len(held.calls) >= 2 or any(t.done() for t in tasks))
        held.released.set()
        responses = await asyncio.gather(*tasks)

    assert sorted(r.status_code for r in responses) == [200, 400]
    assert len(held.calls) == 1


async def test_state_from_one_replica_is_unknown_after_its_use_everywhere(
    settings: Settings, cms: respx.MockRouter
) -> None:
    async with replicas(settings) as (a, b):
        states = [(await authorize(client))["state"] for client in (a, b)]
        answers = [await call_back(client, state) for client, state in zip((b, a), states, strict=True)]
        replays = [await call_back(client, state) for client in (a, b) for state in states]
        leftover = [await _ttl(state) for state in states]

    assert [r.status_code for r in answers] == [200, 200]
    assert [r.status_code for r in replays] == [400, 400, 400, 400]
    assert leftover == [-2, -2]  # consumed: the keys are gone from Redis
    assert cms.routes["token"].call_count == 2


async def _ttl(state: str) -> int:
    redis = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        return int(await redis.ttl(redis_key(state)))
    finally:
        await redis.aclose()
