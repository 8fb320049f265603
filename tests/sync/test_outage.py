"""Grant keeping through a database outage, on a PostgreSQL of the test's own (`own_postgres`):
a refresh token CMS rotated while the database went is written when it is back, and the grant
keeps working; the worker supervisor survives the outage in the same process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from bluebutton.sync import grants, runs
from tests.sync.emulated import LFH, Upstreams, drain, open_service, sync_settings
from tests.sync.own_postgres import OwnPostgres, available

USER = 2
GIVE_UP_SECONDS = 240.0  # only a broken build waits this long; the tests wait for conditions

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


class StopsTheDatabaseAfterRefresh(Upstreams):
    """CMS answers a refresh, and the database goes down before the worker can write the token."""

    def __init__(self, server: OwnPostgres) -> None:
        super().__init__()
        self.server = server
        self.armed = False
        self.refreshes = 0

    async def _cms(self, request: httpx.Request) -> httpx.Response:
        answer = await super()._cms(request)
        if b"grant_type=refresh_token" in request.content:
            self.refreshes += 1
            if self.armed and answer.status_code == 200:
                self.armed = False
                await asyncio.to_thread(self.server.stop)
        return answer


async def test_a_token_cms_rotated_as_the_database_went_is_written_when_it_is_back(
    own_postgres: OwnPostgres, token_keys: str
) -> None:
    upstreams = StopsTheDatabaseAfterRefresh(own_postgres)
    settings = sync_settings(own_postgres.url, token_keys, sync_heartbeat_seconds=1, sync_stalled_seconds=4)
    with upstreams.router():
        async with open_service(settings) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            await drain(service)
            keeping = service.jobs

            async def expire_access_token() -> None:
                async with service.pool.connection() as connection:
                    await connection.execute(
                        "UPDATE bluebutton_grants SET access_expires_at = now() WHERE id = %s", (grant_id,)
                    )

            await expire_access_token()
            upstreams.armed = True
            run_id = await keeping.request_run(grant_id)
            worker = asyncio.create_task(keeping.run_worker(install_signal_handlers=False))
            try:

                async def token_kept() -> bool:
                    return any("rotated tokens" in p.what for p in keeping.journal.pending)

                await until(token_kept, "the rotated token to wait in the journal")
                assert not keeping.watch.reachable
                await asyncio.to_thread(own_postgres.start)

                async def settled() -> bool:
                    if keeping.journal.pending:
                        return False
                    try:
                        found = await runs.get(service.pool, run_id)
                    except Exception:
                        return False
                    return found is not None and found["status"] not in ("queued", "running")

                await until(settled, "the run to end and the journal to empty")

                # the stored refresh token is the rotated one: CMS accepts it (the old one is dead)
                async def latest_succeeded() -> bool:
                    latest = (await runs.of_grant(service.pool, grant_id, 1))[0]
                    return bool(latest["status"] == "succeeded")

                await until(latest_succeeded, "a successful run after the outage")
                await expire_access_token()
                again = await keeping.request_run(grant_id)

                async def again_done() -> bool:
                    found = await runs.get(service.pool, again)
                    return found is not None and found["status"] not in ("queued", "running")

                await until(again_done, "a run that refreshes with the stored token")
                found = await runs.get(service.pool, again)
                assert found is not None
                assert found["status"] == "succeeded", found["issues"]
                grant = await grants.get(service.pool, grant_id)
                assert grant is not None and grant.state == "active"
                assert upstreams.refreshes == 2
                assert not worker.done()  # the same supervisor, through the outage
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)


class StopsTheDatabaseAfterAPost(Upstreams):
    """connect stores a Bundle and answers, and the database goes down before its ledger rows are
    committed (the case that stored 322 entries twice when the worker resent such Bundles)."""

    def __init__(self, server: OwnPostgres) -> None:
        super().__init__()
        self.server = server
        self.armed = False

    async def _connect_async(self, request: httpx.Request) -> httpx.Response:
        answer = self._connect(request)
        if self.armed:
            self.armed = False
            await asyncio.to_thread(self.server.stop)
        return answer

    def router(self) -> respx.MockRouter:
        router = respx.mock(assert_all_mocked=True, assert_all_called=False)
        router.route(host="cms.test").mock(side_effect=self._cms)
        router.post(f"{LFH}/fhir/Bundle").mock(side_effect=self._connect_async)
        return router


async def _stored_then_outage(
    own_postgres: OwnPostgres, token_keys: str, deadline: float
) -> tuple[StopsTheDatabaseAfterAPost, dict[str, Any]]:
    """A first run stored while the database goes right after connect's first answer; the
    database comes back once the ledger rows wait in the journal (or were given up)."""
    upstreams = StopsTheDatabaseAfterAPost(own_postgres)
    settings = sync_settings(
        own_postgres.url,
        token_keys,
        sync_heartbeat_seconds=1,
        sync_stalled_seconds=4,
        sync_commit_deadline_seconds=deadline,
    )
    with upstreams.router():
        async with open_service(settings) as service:
            keeping = service.jobs
            grant_id, run_id = await service.enrol(upstreams.authorize(USER))
            upstreams.armed = True
            worker = asyncio.create_task(keeping.run_worker(install_signal_handlers=False))
            try:

                async def commit_kept_or_given_up() -> bool:
                    return bool(upstreams.posts) and not upstreams.armed and not keeping.watch.reachable

                await until(commit_kept_or_given_up, "the database to go after connect's answer")
                if deadline < 1.0:  # let the deadline pass while the database is away
                    await until(lambda: _given_up(keeping), "the journal to give the ledger rows up")
                await asyncio.to_thread(own_postgres.start)

                async def grant_done() -> bool:
                    try:
                        latest = (await runs.of_grant(service.pool, grant_id, 1))[0]
                    except Exception:
                        return False
                    return bool(latest["status"] == "succeeded" and not keeping.journal.pending)

                await until(grant_done, "a successful run after the outage")
                first = await runs.get(service.pool, run_id)
                assert first is not None
                return upstreams, runs.as_json(first)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)


async def _given_up(keeping: Any) -> bool:
    return not any("ledger rows" in p.what for p in keeping.journal.pending) and bool(keeping.journal.pending)


async def test_a_bundle_stored_as_the_database_went_is_recorded_not_sent_again(
    own_postgres: OwnPostgres, token_keys: str
) -> None:
    upstreams, first = await _stored_then_outage(own_postgres, token_keys, deadline=3600.0)
    ids = upstreams.stored_ids()
    assert len(ids) == len(set(ids)) == 12  # the first Bundle was recorded, never sent again
    assert first["status"] == "failed"
    assert "the database was unreachable" in first["issues"][-1]["diagnostics"]
    recorded = {b["uuid"] for b in first["bundles"]}  # the Bundles stored as the database went
    assert recorded and recorded <= {p["uuid"] for p in upstreams.posts}


async def test_past_the_commit_deadline_the_run_names_the_bundle_that_may_be_stored_twice(
    own_postgres: OwnPostgres, token_keys: str
) -> None:
    upstreams, first = await _stored_then_outage(own_postgres, token_keys, deadline=0.2)
    named = [p for p in upstreams.posts if any(p["uuid"] in i["diagnostics"] for i in first["issues"])]
    assert named, first["issues"]
    assert all(
        "may hold this Bundle twice" in i["diagnostics"]
        for i in first["issues"]
        if "Bundle " in i["diagnostics"] and "ledger rows" in i["diagnostics"]
    )
    ids = upstreams.stored_ids()
    twice = {i for i in ids if ids.count(i) > 1}
    given_up = {e["resource"]["id"] for p in named for e in p["bundle"]["entry"]}
    assert twice == given_up  # exactly the Bundles the run named, once more each
