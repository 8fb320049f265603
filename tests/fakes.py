"""Fakes standing in for time and for the upstreams' side of a conversation: a virtual clock that
records sleeps, a connect that stores what it is sent, a CMS search served by index, CMS answers
held until released."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import respx

from tests.factories import envelope_for, fhir_response


class SleepRecorder:
    """A virtual clock for a client's `sleep=` and `clock=`: `sleep` records its delay and moves
    the clock on instead of waiting, so retry schedules are checked without real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 1000.0
        self._real_sleep = asyncio.sleep

    def reset(self) -> SleepRecorder:
        self.delays.clear()
        return self

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        self.now += max(delay, 0)
        await self._real_sleep(0)
        return result

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        """The wall clock (Unix time, May 2026) that goes with it, for HTTP dates; sleeps move it too."""
        return 1_780_000_000.0 + self.now


def _start_index(page: dict[str, Any]) -> int:
    for link in page.get("link", []):
        if link.get("relation") == "self":
            return int(httpx.URL(link["url"]).params.get("startIndex", "0"))
    return 0


def serve_pages(router: respx.MockRouter, resource_type: str, pages: list[dict[str, Any]]) -> respx.Route:
    """Serve a search: the page whose `self` link has the request's `startIndex` (0 if absent)."""
    by_start = {_start_index(page): page for page in pages}
    if len(by_start) != len(pages):
        by_start = {n: page for n, page in enumerate(pages)}

    def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        if start not in by_start:
            return fhir_response({"detail": "Not found."}, 404)
        return fhir_response(by_start[start])

    return router.get(resource_type, name=f"search {resource_type}").mock(side_effect=answer)


class Connect:
    """A connect mock that stores every POST (numbered from 1) unless told otherwise."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.stored: list[bytes] = []
        self.envelopes: list[bytes] = []
        self.script: list[Any] = []  # per-call overrides: an httpx.Response, an exception, or None
        self.route = router.post("/fhir/Bundle", name="connect").mock(side_effect=self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.script:
            action = self.script.pop(0)
            if isinstance(action, BaseException) or (
                isinstance(action, type) and issubclass(action, BaseException)
            ):
                raise action
            if action is not None:
                assert isinstance(action, httpx.Response)
                return action
        self.stored.append(request.content)
        envelope = orjson.dumps(envelope_for(len(self.stored), request.content))
        self.envelopes.append(envelope)
        return httpx.Response(200, content=envelope, headers={"Content-Type": "application/json"})

    @property
    def posted(self) -> list[dict[str, Any]]:
        """Every Bundle POSTed (stored or not), parsed."""
        return [orjson.loads(call.request.content) for call in self.route.calls]

    @property
    def stored_bundles(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for body in self.stored]


@dataclass
class HeldCms:
    """A respx side effect that holds CMS's answers until released, so requests really overlap."""

    respond: Callable[[httpx.Request], httpx.Response]
    calls: list[httpx.Request] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        await self.released.wait()
        return self.respond(request)


async def until(predicate: Callable[[], bool], polls: int = 5000) -> None:
    """Yield to the loop until `predicate()` holds (bounded; the caller's assertions decide)."""
    for _ in range(polls):
        if predicate():
            return
        await asyncio.sleep(0.001)


def inside(task: asyncio.Task[Any], function: str, module_file: str) -> bool:
    """Whether the suspended task is awaiting somewhere inside `function` of the given product file.

    Walks the chain of awaited coroutines (`Task.get_stack` shows only the outermost frame of a
    suspended coroutine).
    """
    awaited: Any = task.get_coro()
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is not None and code.co_name == function and code.co_filename.endswith(module_file):
            return True
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return False


class HeldConnect(Connect):
    """A connect that holds the POSTs numbered (from 1) in `held` until `released` is set, which
    may be never: a connect that stops answering at a chosen Bundle."""

    def __init__(self, router: respx.MockRouter, held: set[int]) -> None:
        super().__init__(router)
        self.held = held
        self.posts = 0
        self.holding = asyncio.Event()
        self.released = asyncio.Event()
        self.route.mock(side_effect=self._held_answer)

    async def _held_answer(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        if self.posts in self.held:
            self.holding.set()
            await self.released.wait()
        return self._answer(request)


class Deadlines:
    """Replaces the pipeline's deadline with the same `asyncio.Timeout`, kept so a test can make
    it pass at the moment it chooses instead of waiting for it."""

    def __init__(self) -> None:
        self.started: list[asyncio.Timeout] = []
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> asyncio.Timeout:
        self.seconds.append(seconds)
        self.started.append(asyncio.timeout(seconds))
        return self.started[-1]

    def pass_now(self) -> None:
        [timeout] = self.started
        timeout.reschedule(asyncio.get_running_loop().time())
