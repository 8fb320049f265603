"""The composition root: what it opens it closes, what it is given it leaves open, its clients count
in its metrics from the start, and one Redis client serves both stores."""

from __future__ import annotations

import httpx
import pytest
import respx

from bluebutton.cms.pending import MemoryPendingStore, RedisPendingStore
from bluebutton.fhir.validator import Validator
from bluebutton.metrics import Metrics
from bluebutton.pull.idempotency_store import MemoryIdempotencyStore, RedisIdempotencyStore
from bluebutton.resources import Overrides, open_resources
from tests.factories import FHIR_BASE, make_settings
from tests.fakes import Connect
from tests.running import new_cms_client
from tests.services import REDIS_URL

# Never started: these tests need no validation processes.
IDLE = Overrides(validator=Validator(1))


def counted(metrics: Metrics, upstream: str, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(
        "bluebutton_upstream_requests_total", {"upstream": upstream, "outcome": outcome}
    )


async def test_the_clients_it_builds_count_every_call_in_its_metrics(
    cms_mock: respx.MockRouter, connect_mock: respx.MockRouter
) -> None:
    connect = Connect(connect_mock)
    cms_mock.get("metadata").respond(200, json={"resourceType": "CapabilityStatement"})
    cms_mock.get("Patient").mock(side_effect=httpx.ReadTimeout("slow"))
    async with open_resources(make_settings(), IDLE) as resources:
        assert (await resources.cms.http.get(f"{FHIR_BASE}metadata")).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await resources.cms.http.get(f"{FHIR_BASE}Patient")
        await resources.connect.post_bundle(b'{"resourceType": "Bundle"}')
    assert len(connect.stored) == 1
    assert counted(resources.metrics, "cms", "2xx") == 1
    assert counted(resources.metrics, "cms", "timeout") == 1
    assert counted(resources.metrics, "connect", "2xx") == 1


async def test_what_it_opens_it_closes_and_what_it_is_given_stays_open() -> None:
    settings = make_settings()
    async with new_cms_client(settings) as given:
        overrides = Overrides(cms=given, validator=IDLE.validator)
        async with open_resources(settings, overrides) as resources:
            assert resources.cms is given
            built = resources.connect
        assert not given.http.is_closed
        with pytest.raises(RuntimeError, match="closed"):
            await built.post_bundle(b"{}")  # the root closed the client it built
    assert given.http.is_closed


async def test_without_grant_keeping_there_is_no_pool_to_reach() -> None:
    async with open_resources(make_settings(), IDLE) as resources:
        assert resources.database is None
        with pytest.raises(RuntimeError, match="grant keeping is off"):
            _ = resources.pool
        with pytest.raises(RuntimeError, match="grant keeping is off"):
            _ = resources.cipher


async def test_memory_stores_by_default() -> None:
    async with open_resources(make_settings(state_store="memory"), IDLE) as resources:
        assert isinstance(resources.pending, MemoryPendingStore)
        assert isinstance(resources.idempotency, MemoryIdempotencyStore)


async def test_one_redis_client_serves_both_stores() -> None:
    # Redis connects lazily: no server is needed to open the stores.
    async with open_resources(make_settings(state_store=REDIS_URL), IDLE) as resources:
        assert isinstance(resources.pending, RedisPendingStore)
        assert isinstance(resources.idempotency, RedisIdempotencyStore)
        # The stores' own attribute: the one thing this test is about.
        assert resources.idempotency._client is resources.pending._client
