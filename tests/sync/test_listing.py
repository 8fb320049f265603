"""Paged listings (`sync/listing.py`, `sync/keyset.py`) through the real operator API and a real
PostgreSQL filled by the paging benchmark's bulk SQL: cursors that survive inserts, filters, counts
by state, refused cursors and page sizes, runs and records paged, and a fixed number of queries
per page whatever its size."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from bluebutton.sandbox.tools.bench.grants import fill
from bluebutton.sync import listing
from bluebutton.sync.keyset import CursorError, decode, encode
from tests.running import open_client
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import sync_settings

KEY = {"X-API-Key": ADMIN_KEY}
GRANTS = 250  # the fill's mix: 80 % active, 8 % failing, 5 % expired, 5 % revoked, 2 % disconnected
COUNTS = {"active": 210, "failing": 16, "expired": 10, "revoked": 10, "disconnected": 4, "migrated": 0}


@asynccontextmanager
async def filled(database_url: str, token_keys: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(sync_settings(database_url, token_keys)) as client:  # migrates
        fill(database_url, GRANTS)
        yield client


async def walk(client: httpx.AsyncClient, path: str, key: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        answer = await client.get(
            path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=KEY
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body[key])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def test_the_grant_list_pages_by_cursor_and_insertions_move_nothing(
    database_url: str, token_keys: str
) -> None:
    async with filled(database_url, token_keys) as client:
        first = (await client.get("/bluebutton/grants", params={"limit": 100}, headers=KEY)).json()
        assert len(first["grants"]) == 100 and first["limit"] == 100
        assert first["total"] == GRANTS and first["counts"] == COUNTS
        # Grants arrive while the operator pages: one enrolled earlier than the page boundary (it
        # sorts before the cursor: not shown, and it shifts nothing), one now (it sorts last).
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO bluebutton_grants (id, patient, api_version, state, created_at) VALUES "
                "(%s, 'early', 2, 'active', now() - interval '10 years'), (%s, 'late', 2, 'active', now())",
                (uuid.uuid4(), uuid.uuid4()),
            )
        rest = await walk(client, "/bluebutton/grants", "grants", limit=100)
        rest_from_cursor: list[dict[str, Any]] = []
        cursor = first["next_cursor"]
        while cursor:
            body = (
                await client.get("/bluebutton/grants", params={"limit": 100, "cursor": cursor}, headers=KEY)
            ).json()
            rest_from_cursor += body["grants"]
            cursor = body["next_cursor"]
    seen = [g["patient"] for g in first["grants"] + rest_from_cursor]
    assert len(seen) == len(set(seen)) == GRANTS + 1  # none twice, none skipped, "late" at the end
    assert seen[-1] == "late" and "early" not in seen
    assert next(g["patient"] for page in rest for g in page) == "early"  # a new walk starts with it
    created = [g["created_at"] for g in first["grants"]]
    assert created == sorted(created)


async def test_filters_by_state_and_patient_with_counts(database_url: str, token_keys: str) -> None:
    async with filled(database_url, token_keys) as client:
        failing = await walk(client, "/bluebutton/grants", "grants", state="failing", limit=7)
        listed = [g for page in failing for g in page]
        assert len(listed) == COUNTS["failing"] and {g["state"] for g in listed} == {"failing"}
        for grant in listed:
            failures = 1 + int(grant["patient"][1:]) % 5  # patient "-<10000000000000 + i>"
            plural = "s" if failures > 1 else ""
            assert grant["state_reason"] == (
                "Blue Button answered 503 (Service Unavailable) after 3 attempts; retried later "
                f"({failures} failure{plural} in a row, retried with backoff)"
            )
        assert all("503" in g["last_failure"]["reason"] for g in listed)
        revoked = (await client.get("/bluebutton/grants", params={"state": "revoked"}, headers=KEY)).json()
        assert (
            revoked["total"] == COUNTS["revoked"] and "refresh token" in revoked["grants"][0]["state_reason"]
        )
        # a prefix: patients -10000000000120 .. -10000000000129 (and -1000000000012 itself is none)
        found = (
            await client.get("/bluebutton/grants", params={"patient": "-1000000000012"}, headers=KEY)
        ).json()
        assert sorted(g["patient"] for g in found["grants"]) == [f"-100000000001{n}" for n in range(20, 30)]
        assert found["total"] == 10 and sum(found["counts"].values()) == 10
        # LIKE's wildcards are taken literally
        none = (await client.get("/bluebutton/grants", params={"patient": "%"}, headers=KEY)).json()
        assert none["grants"] == [] and none["total"] == 0
        one = found["grants"][0]
        assert one["claims_held"] == 5 and one["records_held"] == 10
        assert one["last_succeeded_at"] is not None


@pytest.mark.parametrize(
    ("params", "where"),
    [
        pytest.param({"cursor": "not-a-cursor"}, "cursor", id="garbage"),
        pytest.param({"cursor": encode(1, 2)}, "cursor", id="wrong-shape"),
        pytest.param({"cursor": encode("yesterday", "x")}, "cursor", id="wrong-values"),
        pytest.param({"cursor": "x" * 513}, "cursor", id="too-long"),
        pytest.param({"limit": 1001}, "limit", id="page-too-big"),
        pytest.param({"limit": 0}, "limit", id="page-empty"),
        pytest.param({"state": "paused"}, "state", id="unknown-state"),
        pytest.param({"patient": "-100\x00"}, "patient", id="nul-in-patient"),
        pytest.param({"patient": "x" * 65}, "patient", id="patient-too-long"),
    ],
)
async def test_bad_paging_parameters_are_refused_naming_them(
    database_url: str, token_keys: str, params: dict[str, Any], where: str
) -> None:
    async with open_client(sync_settings(database_url, token_keys)) as client:
        answer = await client.get("/bluebutton/grants", params=params, headers=KEY)
    assert answer.status_code == 422, answer.text
    issue = answer.json()["issue"][0]
    assert issue["expression"] == [where], issue


async def test_runs_and_records_page_too(database_url: str, token_keys: str) -> None:
    async with filled(database_url, token_keys) as client:
        grant = (await client.get("/bluebutton/grants", params={"limit": 1}, headers=KEY)).json()["grants"][0]
        base = f"/bluebutton/grants/{grant['id']}"
        run_pages = await walk(client, f"{base}/runs", "runs", limit=1)
        ids = [page[0]["id"] for page in run_pages]
        assert len(run_pages) == 2 and ids == sorted(ids, reverse=True)
        record_pages = await walk(client, f"{base}/records", "records", limit=3)
        records = [(r["resource_type"], r["id"]) for page in record_pages for r in page]
        assert [len(p) for p in record_pages] == [3, 3, 3, 1] and records == sorted(records)
        whole = (await client.get(f"{base}/records", headers=KEY)).json()
        assert whole["total"] == 10 and whole["next_cursor"] is None and len(whole["records"]) == 10
        refused = await client.get(f"{base}/runs", params={"cursor": encode("a", "b")}, headers=KEY)
        assert refused.status_code == 422


class CountingPool:
    """The pool, counting the connections taken: each listing query takes one."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.taken = 0

    def connection(self) -> Any:
        self.taken += 1
        return self.pool.connection()


async def test_a_page_costs_the_same_queries_whatever_its_size(database_url: str, token_keys: str) -> None:
    async with filled(database_url, token_keys):
        pass
    async with AsyncConnectionPool(database_url, open=False) as pool:
        costs = {}
        for size in (1, 10, 200):
            counting = CountingPool(pool)
            page, _ = await listing.grants_page(
                counting,  # type: ignore[arg-type]
                state=None,
                patient=None,
                limit=size,
                cursor=None,
            )
            assert len(page.items) == size
            costs[size] = counting.taken
    assert costs[1] == costs[10] == costs[200] == 6, costs


def test_cursors_decode_only_to_the_shape_asked_for() -> None:
    assert decode(encode("a", 2), str, int) == ("a", 2)
    for bad in ("", "!!!", encode(True), encode("a"), "WzEuNV0", "eyJ"):  # WzEuNV0: [1.5]
        with pytest.raises(CursorError):
            decode(bad, int)
