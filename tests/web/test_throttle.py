"""Wrong admin keys throttled per client (issue 18): the throttle itself on a virtual clock
(`X-API-Key` and the console's form through the real app: tests/web/console/test_sessions.py)."""

from __future__ import annotations

import httpx
import pytest

from bluebutton.web.throttle import AdminKeyThrottle, AdminKeyThrottledError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_past_the_budget_a_client_waits_until_its_oldest_wrong_key_leaves_the_window() -> None:
    clock = Clock()
    throttle = AdminKeyThrottle(budget=3, window=60, clock=clock)
    for step in range(3):
        clock.now = 100 + step
        throttle.admit("10.0.0.1").failed()

    with pytest.raises(AdminKeyThrottledError) as refused:
        throttle.admit("10.0.0.1")
    assert refused.value.status_code == 429 and refused.value.code == "throttled"
    assert refused.value.headers == {"Retry-After": "58"}  # the first wrong key (t=100) leaves at 160
    throttle.admit("10.0.0.2").finished()  # another client has its own budget

    clock.now = 160
    throttle.admit("10.0.0.1").finished()  # one slot again


def test_keys_still_being_checked_count_against_the_budget() -> None:
    throttle = AdminKeyThrottle(budget=2, window=60, clock=Clock())
    first, second = throttle.admit("c"), throttle.admit("c")
    with pytest.raises(AdminKeyThrottledError) as refused:
        throttle.admit("c")
    assert refused.value.headers == {"Retry-After": "1"}
    first.finished()
    second.finished()
    second.failed()  # an attempt ends once
    throttle.admit("c").finished()  # right keys leave no trace


async def test_the_operator_routes_document_their_429(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "429" in document["paths"]["/bluebutton/grants"]["get"]["responses"]
    assert "429" in document["paths"]["/metrics"]["get"]["responses"]
