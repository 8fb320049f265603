"""A pull's limits through the real app: one deadline for fetch + validate + forward, and a caller
that disconnects (what is stored is reported, nothing is forwarded after it left)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import respx

from tests.factories import (
    AUTH,
    SMALL_LIMIT,
    cms_page,
    eob_with_entry_size,
    fhir_response,
    make_eob,
    make_settings,
    record_location,
    record_uuid,
)
from tests.fakes import Connect, Deadlines, HeldCms, HeldConnect, until
from tests.running import open_client, running_asgi
from tests.wire import diagnostics, outcome_issues

EOB = "ExplanationOfBenefit"
CANARY = "Zanzibar-Quokka-4471"  # a value that only exists inside the claims

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")


async def get_fhir(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    return await client.get("/bluebutton/fhir", params={"resource_type": EOB, **params}, headers=AUTH)


def sized_claims(count: int, size: int) -> list[dict[str, Any]]:
    return [eob_with_entry_size(n, size) for n in range(count)]


# ----------------------------------------------------------------------------------------- deadline


async def test_a_cms_that_never_answers_is_504_at_the_deadline(
    cms_mock: respx.MockRouter, connect: Connect
) -> None:
    never = HeldCms(lambda request: fhir_response(cms_page([make_eob(1)], total=1)))
    cms_mock.get(EOB).mock(side_effect=never)
    async with open_client(make_settings(pull_timeout_seconds=0.05)) as client:
        # The bound only turns a missing deadline into a failure instead of a hung test.
        response = await asyncio.wait_for(get_fhir(client), timeout=120)
    assert response.status_code == 504, response.text
    [issue] = outcome_issues(response)
    assert issue["code"] == "timeout"
    assert "BLUEBUTTON_PULL_TIMEOUT_SECONDS=0.05 s" in issue["diagnostics"]
    assert "before anything was sent to LinuxForHealth connect" in issue["diagnostics"]
    assert response.headers["X-LFH-Bundle-Count"] == "0"
    assert len(never.calls) == 1
    assert not connect.route.calls


async def test_one_deadline_covers_the_whole_pull_by_default_300_s(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, deadlines: Deadlines
) -> None:
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page([make_eob(1)], total=1)))
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    assert deadlines.seconds == [300.0]


async def test_the_deadline_passing_while_connect_holds_a_bundle_says_what_is_stored(
    small_client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect_mock: respx.MockRouter,
    deadlines: Deadlines,
) -> None:
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page(sized_claims(10, 4000), total=10)))
    connect = HeldConnect(connect_mock, held={3})  # never answers the third POST
    request = asyncio.ensure_future(get_fhir(small_client))
    await asyncio.wait_for(connect.holding.wait(), timeout=60)
    deadlines.pass_now()
    response = await request

    assert response.status_code == 504, response.text
    issues = outcome_issues(response)
    text = diagnostics(response)
    assert "BLUEBUTTON_PULL_TIMEOUT_SECONDS=300 s" in issues[0]["diagnostics"]
    assert "stored 2 of 5 Bundles; entries 4-9 were not stored" in issues[0]["diagnostics"]
    assert "same Idempotency-Key" in issues[0]["diagnostics"]
    for n in (1, 2):
        assert record_uuid(n) in text
        assert record_location(n) in text
    unknown = [i for i in issues if i["severity"] == "warning"]
    assert len(unknown) == 1
    assert "Bundle 3 (entries 4-5) was being sent and may have been stored" in unknown[0]["diagnostics"]
    assert response.headers["X-LFH-Bundle-Count"] == "2"
    assert response.headers["X-LFH-Record-UUIDs"] == f"{record_uuid(1)},{record_uuid(2)}"
    assert connect.posts == 3  # nothing after the deadline
    assert len(connect.stored) == 2


# ---------------------------------------------------------------------------------- caller leaves


class Caller:
    """The client side of one ASGI request: a GET without a body, then `http.disconnect` when
    the test says the caller has gone (what uvicorn delivers when the socket closes)."""

    def __init__(self, query: str) -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/bluebutton/fhir",
            "raw_path": b"/bluebutton/fhir",
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"test"), (b"authorization", AUTH["Authorization"].encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }
        self.gone = asyncio.Event()
        self.requested = False
        self.sent: list[MutableMapping[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    def status(self) -> int:
        [start] = [m for m in self.sent if m["type"] == "http.response.start"]
        return int(start["status"])


def warnings_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name in ("bluebutton.pull.pipeline", "bluebutton.pull.progress")
    )


async def test_a_caller_gone_before_forwarding_gets_nothing_forwarded(
    cms_mock: respx.MockRouter, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    never = HeldCms(lambda request: fhir_response(cms_page([make_eob(1)], total=1)))
    cms_mock.get(EOB).mock(side_effect=never)
    caller = Caller(f"resource_type={EOB}")
    async with running_asgi(make_settings()) as app:
        call = asyncio.ensure_future(app(caller.scope, caller.receive, caller.send))
        await until(lambda: bool(never.calls))
        caller.gone.set()
        # The pull is abandoned at once: CMS never answers and the deadline is 300 s away.
        await asyncio.wait_for(call, timeout=60)
    assert len(never.calls) == 1
    assert not connect.route.calls
    assert caller.status() == 499
    assert "The caller disconnected before anything was sent to LinuxForHealth connect" in warnings_logged(
        caplog
    )


async def test_a_caller_gone_between_bundles_stops_forwarding_and_logs_what_is_stored(
    cms_mock: respx.MockRouter, connect_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    claims = sized_claims(10, 4000)
    for claim in claims:
        claim["patient"]["display"] = CANARY
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page(claims, total=10)))
    connect = HeldConnect(connect_mock, held={2})
    caller = Caller(f"resource_type={EOB}")
    async with running_asgi(make_settings(lfh_max_bundle_bytes=SMALL_LIMIT)) as app:
        call = asyncio.ensure_future(app(caller.scope, caller.receive, caller.send))
        await asyncio.wait_for(connect.holding.wait(), timeout=60)
        caller.gone.set()  # while Bundle 2 of 5 is with connect
        await until(lambda: "caller left while forwarding" in warnings_logged(caplog))
        connect.released.set()
        await asyncio.wait_for(call, timeout=60)

    assert connect.posts == 2  # the POST in flight was waited for; no later one started
    assert len(connect.stored) == 2
    assert caller.status() == 499
    logged = warnings_logged(caplog)
    assert "stored 2 of 5 Bundles; entries 4-9 were not stored" in logged
    assert f"{record_uuid(1)},{record_uuid(2)}" in logged
    assert f"{record_location(1)},{record_location(2)}" in logged
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert CANARY not in everything
    assert AUTH["Authorization"].split()[1] not in everything
