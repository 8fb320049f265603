"""Console sessions listed on the server (issue 18): signing out kills every copy of the cookie, a
sign-in form serves one sign-in, and wrong keys posted at once are throttled past a small budget."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from bluebutton.web.console.routes import HOME, SESSION_COOKIE, SIGN_IN_COOKIE
from bluebutton.web.sessions import MAX_FORMS, MemoryConsoleSessions, RedisConsoleSessions
from bluebutton.web.throttle import BUDGET
from tests.services import REDIS_URL, redis_unavailable
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import sync_settings
from tests.web.console.conftest import ConsoleTime, Page, console_client

SIGN_IN = f"{HOME}/sign-in"


async def a_form(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A fresh sign-in form: its cookie value and its fields."""
    answer = await client.get(HOME)
    return answer.cookies[SIGN_IN_COOKIE], Page(answer.text).forms[SIGN_IN]


async def post_form(client: httpx.AsyncClient, form: tuple[str, dict[str, str]], key: str) -> httpx.Response:
    cookie, fields = form
    client.cookies.clear()
    return await client.post(
        SIGN_IN, data={**fields, "key": key}, headers={"Cookie": f"{SIGN_IN_COOKIE}={cookie}"}
    )


async def test_signing_out_kills_every_copy_of_the_session_cookie(database_url: str, token_keys: str) -> None:
    async with console_client(sync_settings(database_url, token_keys), ConsoleTime()) as client:
        signed_in = await post_form(client, await a_form(client), ADMIN_KEY)
        assert signed_in.status_code == 303
        stolen = signed_in.cookies[SESSION_COOKIE]
        home = await client.get(HOME)
        assert "sign-out" in Page(home.text).ids

        out = await client.post(f"{HOME}/sign-out", data=Page(home.text).forms[f"{HOME}/sign-out"])
        assert out.status_code == 303

        client.cookies.clear()
        replayed = await client.get(HOME, headers={"Cookie": f"{SESSION_COOKIE}={stolen}"})
        assert "sign-in" in Page(replayed.text).ids and "sign-out" not in Page(replayed.text).ids
        posted = await client.post(
            f"{HOME}/grants/00000000-0000-0000-0000-000000000000/sync",
            data=Page(home.text).forms[f"{HOME}/sign-out"],
            headers={"Cookie": f"{SESSION_COOKIE}={stolen}"},
        )
        assert posted.status_code == 401


async def test_a_sign_in_form_serves_one_sign_in(database_url: str, token_keys: str) -> None:
    async with console_client(sync_settings(database_url, token_keys), ConsoleTime()) as client:
        form = await a_form(client)
        assert (await post_form(client, form, "x" * 40)).status_code == 401
        replayed = await post_form(client, form, ADMIN_KEY)
        assert replayed.status_code == 403 and "used already" in replayed.text

        other = await a_form(client)
        assert (await post_form(client, other, ADMIN_KEY)).status_code == 303
        assert (await post_form(client, other, ADMIN_KEY)).status_code == 403


class HeldPause(ConsoleTime):
    """The wrong-key pause, held until the test lets go: every admitted guess is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await self.release.wait()


async def test_concurrent_wrong_keys_on_the_form_are_throttled_past_the_budget(
    database_url: str, token_keys: str
) -> None:
    time = HeldPause()
    extra = 15
    async with console_client(sync_settings(database_url, token_keys), time) as client:
        forms = [await a_form(client) for _ in range(BUDGET + extra)]
        guesses = [
            asyncio.ensure_future(_post_alone(client, form, f"guess-{n}" * 8)) for n, form in enumerate(forms)
        ]
        # The admitted guesses wait in the pause; the refused ones are answered meanwhile.
        refused: set[asyncio.Future[httpx.Response]] = set()
        while len(refused) < extra:
            finished, _ = await asyncio.wait(
                [g for g in guesses if g not in refused], timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            assert finished, "no guess was refused while the budget was in flight"
            refused |= finished
        assert len(time.pauses) == BUDGET  # only the budget got as far as comparing the key
        for answer in [task.result() for task in refused]:
            assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
            assert "sign-in" in Page(answer.text).ids  # a fresh form, with the reason
        time.release.set()
        await asyncio.gather(*guesses)
        assert [g.result().status_code for g in guesses if g not in refused] == [401] * BUDGET

        right = await post_form(client, await a_form(client), ADMIN_KEY)
        assert right.status_code == 429  # the right key waits too: it is not compared while throttled


async def _post_alone(
    client: httpx.AsyncClient, form: tuple[str, dict[str, str]], key: str
) -> httpx.Response:
    cookie, fields = form
    return await client.post(
        SIGN_IN, data={**fields, "key": key}, headers={"Cookie": f"{SIGN_IN_COOKIE}={cookie}"}
    )


async def test_memory_store_expires_and_bounds_forms() -> None:
    now = [0.0]
    store = MemoryConsoleSessions(clock=lambda: now[0])
    await store.add("session", "s", 10)
    assert await store.alive("session", "s") and not await store.alive("sign-in", "s")
    now[0] = 10
    assert not await store.alive("session", "s") and not await store.take("session", "s")
    for n in range(MAX_FORMS + 1):
        await store.add("sign-in", f"f{n}", 600)
    assert not await store.take("sign-in", "f0")  # the oldest made room
    assert await store.take("sign-in", f"f{MAX_FORMS}") and not await store.take("sign-in", f"f{MAX_FORMS}")


async def test_redis_store_takes_a_form_once_across_clients() -> None:
    reason = redis_unavailable(REDIS_URL)
    if reason is not None:
        pytest.skip(reason)
    clients = [aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)]
    first, second = RedisConsoleSessions(clients[0]), RedisConsoleSessions(clients[1])
    try:
        await first.add("sign-in", "form-test-1", 30)
        assert await second.alive("sign-in", "form-test-1")
        taken = await asyncio.gather(
            first.take("sign-in", "form-test-1"), second.take("sign-in", "form-test-1")
        )
        assert sorted(taken) == [False, True]
        await first.add("session", "session-test-1", 30)
        assert await second.take("session", "session-test-1") and not await first.alive(
            "session", "session-test-1"
        )
    finally:
        for client in clients:
            await client.aclose()


async def test_x_api_key_guesses_get_429_past_the_budget(database_url: str, token_keys: str) -> None:
    async with console_client(sync_settings(database_url, token_keys), ConsoleTime()) as client:
        missing = [await client.get("/bluebutton/grants") for _ in range(BUDGET + 2)]
        assert {r.status_code for r in missing} == {401}  # no key offered is no guess

        guesses = await asyncio.gather(
            *(client.get("/bluebutton/grants", headers={"X-API-Key": f"guess-{n:032d}"}) for n in range(50))
        )
        right = await client.get("/bluebutton/grants", headers={"X-API-Key": ADMIN_KEY})

    statuses = [r.status_code for r in guesses]
    assert statuses.count(401) == BUDGET and statuses.count(429) == 50 - BUDGET
    refused = next(r for r in guesses if r.status_code == 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["issue"][0]["code"] == "throttled"
    assert right.status_code == 429  # while throttled, even the right key is not compared
