"""Nothing stored twice that can be known: any number of Sync-now presses make one run, and
connect's 200 without a location is recorded as stored (location unknown), never sent again."""

from __future__ import annotations

import asyncio

import httpx

from bluebutton.sync import ledger, runs
from tests.sync.emulated import Upstreams, drain, open_service, run_once, sync_settings

USER = 2  # BBUser00002: 7 claims, 4 coverages, 1 patient
PRESSES = 500
MANY_BUNDLES_USER = 4  # BBUser00004: 200 claims, about 20 Bundles


class RacyConnect(Upstreams):
    """connect 0.42.0's Kafka-callback race: every other POST is stored but answered 200 with
    `status` and `data_record_location` null (lfh-connect.md §7)."""

    def _connect(self, request: httpx.Request) -> httpx.Response:
        answer = super()._connect(request)
        if len(self.posts) % 2 == 0:
            return answer
        record = dict(self.posts[-1])
        record.pop("bundle")
        return httpx.Response(200, json={**record, "status": None, "data_record_location": None})


async def test_any_number_of_sync_now_presses_make_one_run(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys, database_pool_size=10)) as service:
            grant_id, first = await service.enrol(upstreams.authorize(USER))
            answers = await asyncio.gather(*(service.sync_now(grant_id) for _ in range(PRESSES)))
            assert set(answers) == {first}
            async with service.pool.connection() as connection:
                row = await (
                    await connection.execute(
                        "SELECT count(*), count(DISTINCT job_id) FROM bluebutton_runs WHERE grant_id = %s",
                        (grant_id,),
                    )
                ).fetchone()
            assert row == (1, 1)
            await drain(service)
            done = await runs.get(service.pool, first)
            assert done is not None and done["status"] == "succeeded"
            assert len(upstreams.stored_ids()) == len(set(upstreams.stored_ids())) == 12


async def test_a_200_without_location_is_stored_once_and_says_location_unknown(
    database_url: str, token_keys: str
) -> None:
    upstreams = RacyConnect()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(MANY_BUNDLES_USER))
            first = await run_once(service, grant_id)
            assert first["status"] == "succeeded", first["issues"]
            unknown = [b for b in first["bundles"] if b["data_record_location"] == ledger.LOCATION_UNKNOWN]
            assert len(first["bundles"]) >= 4 and len(unknown) == (len(first["bundles"]) + 1) // 2
            assert any("location unknown" in i["diagnostics"] for i in first["issues"])
            ids = upstreams.stored_ids()
            assert len(ids) == len(set(ids)) == 205  # nothing sent twice
            records = await ledger.records(service.pool, grant_id)
            assert {r["data_record_location"] for r in records} >= {ledger.LOCATION_UNKNOWN}
            assert {r["uuid"] for r in records} == {p["uuid"] for p in upstreams.posts}

            second = await run_once(service, grant_id)
            assert second["status"] == "succeeded" and second["bundles"] == []
            assert len(upstreams.posts) == len(first["bundles"])  # the next run resends nothing


class SlowConnect(Upstreams):
    """connect stores the Bundle but its answer never arrives within the POST timeout."""

    def _connect(self, request: httpx.Request) -> httpx.Response:
        super()._connect(request)
        raise httpx.ReadTimeout("no answer in time", request=request)


async def test_a_post_without_an_answer_is_told_in_grant_keeping_terms(
    database_url: str, token_keys: str
) -> None:
    upstreams = SlowConnect()
    settings = sync_settings(database_url, token_keys, sync_lfh_timeout_seconds=7)
    with upstreams.router():
        async with open_service(settings) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            run = await run_once(service, grant_id)
    assert run["status"] == "failed"
    told = " ".join(i["diagnostics"] for i in run["issues"])
    assert "Idempotency-Key" not in told
    assert "within 7 s (BLUEBUTTON_SYNC_LFH_TIMEOUT_SECONDS)" in told
    assert "connect may hold this one Bundle twice, nothing else" in told
