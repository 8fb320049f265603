"""Webhook delivery through a real worker to a real receiver on a loopback socket: signatures,
retries with backoff until a 2xx, at most the configured attempts, nothing of the answer logged."""

from __future__ import annotations

import logging

import orjson
import pytest

from bluebutton.events.signing import secret_key, verify
from bluebutton.events.webhooks import target_of
from bluebutton.metrics import read_database
from bluebutton.sync.grants import STATES
from tests.events.events import BODY_KEYS, SECRET, deliveries, enrol_only
from tests.events.receiver import Receiver, running
from tests.factories import CERTS
from tests.sync.emulated import Upstreams, drain, open_service, run_once, sync_settings


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


def _settings(database_url: str, token_keys: str, receiver: Receiver) -> object:
    return sync_settings(
        database_url,
        token_keys,
        webhook_urls=receiver.url,
        webhook_secret=SECRET,
        webhook_retry_wait_seconds=0,
    )


def _check_signed(receiver: Receiver) -> None:
    key = secret_key(SECRET)
    for got in receiver.requests:
        h = got.headers
        assert h["content-type"] == "application/json"
        assert verify(key, h["webhook-id"], int(h["webhook-timestamp"]), got.body, h["webhook-signature"])
        assert orjson.loads(got.body)["id"] == h["webhook-id"]


async def test_a_receiver_failing_twice_gets_the_event_exactly_once_more(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    async with running(Receiver(statuses=[500, 503])) as receiver:
        with upstreams.router() as router:
            router.route(host="127.0.0.1").pass_through()
            async with open_service(_settings(database_url, token_keys, receiver)) as service:  # type: ignore[arg-type]
                grant_id = await enrol_only(service, upstreams)
                await drain(service)
                assert len(receiver.requests) == 3
                assert {r.headers["webhook-id"] for r in receiver.requests} == {
                    receiver.requests[0].headers["webhook-id"]
                }
                assert {r.body for r in receiver.requests} == {receiver.requests[0].body}
                _check_signed(receiver)
                body = orjson.loads(receiver.requests[0].body)
                assert body["type"] == "grant.created" and body["grant_id"] == str(grant_id)
                assert set(body) <= BODY_KEYS
                assert await deliveries(service, body["id"]) == [(target_of(receiver.url), "delivered", 3)]

                await drain(service)  # delivered: never sent again
                assert len(receiver.requests) == 3


async def test_a_receiver_that_always_fails_gets_five_attempts_and_its_answer_is_not_logged(
    upstreams: Upstreams, database_url: str, token_keys: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(Receiver(statuses=[500] * 10)) as receiver:
        with upstreams.router() as router:
            router.route(host="127.0.0.1").pass_through()
            async with open_service(_settings(database_url, token_keys, receiver)) as service:  # type: ignore[arg-type]
                await enrol_only(service, upstreams)
                await drain(service)
                assert len(receiver.requests) == 5
                event_id = receiver.requests[0].headers["webhook-id"]
                assert await deliveries(service, event_id) == [(target_of(receiver.url), "failed", 5)]
                assert receiver.statuses == [500] * 5  # five answers left: nothing more was sent
                figures = {f.name: f for f in await read_database(service.pool, STATES)}
                counted = {
                    tuple(x.labels.values()): x.value for x in figures["bluebutton_event_deliveries"].samples
                }
                assert counted == {(target_of(receiver.url), "failed"): 1.0}
    assert "receiver-private-answer" not in caplog.text
    assert "HTTP 500" in caplog.text
    assert receiver.url not in caplog.text and "/hooks" not in caplog.text  # its path may be a secret
    assert target_of(receiver.url) in caplog.text


async def test_runs_and_a_disconnect_reach_the_receiver_without_tokens(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    async with running(Receiver()) as receiver:
        with upstreams.router() as router:
            router.route(host="127.0.0.1").pass_through()
            async with open_service(_settings(database_url, token_keys, receiver)) as service:  # type: ignore[arg-type]
                tokens = upstreams.authorize(2)
                upstreams.code_answer = tokens
                grant_id, run_id = await service.enrol(tokens)
                await drain(service)
                await service.disconnect(grant_id)
                await drain(service)
    _check_signed(receiver)
    bodies = [orjson.loads(r.body) for r in receiver.requests]
    assert sorted(b["type"] for b in bodies) == ["grant.created", "grant.disconnected", "run.succeeded"]
    run = next(b for b in bodies if b["type"] == "run.succeeded")
    assert run["run_id"] == run_id and run["counts"]["ExplanationOfBenefit"]["new"] == 7
    assert all(b["patient"] == tokens.patient and b["grant_id"] == str(grant_id) for b in bodies)
    for got in receiver.requests:
        assert tokens.access_token.encode() not in got.body
        assert tokens.refresh_token is not None and tokens.refresh_token.encode() not in got.body
        assert b"resourceType" not in got.body
        assert all(set(b) <= BODY_KEYS for b in bodies)


async def test_a_failed_run_is_told_with_its_reason(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    async with running(Receiver()) as receiver:
        with upstreams.router() as router:
            router.route(host="127.0.0.1").pass_through()
            async with open_service(_settings(database_url, token_keys, receiver)) as service:  # type: ignore[arg-type]
                grant_id, _ = await service.enrol(upstreams.authorize(2))
                upstreams.tokens.revoke_user(2, None)  # the beneficiary disconnected in Medicare.gov
                async with service.pool.connection() as connection:  # the run must refresh
                    await connection.execute(
                        "UPDATE bluebutton_grants SET access_expires_at = now() WHERE id = %s", (grant_id,)
                    )
                run = await run_once(service, grant_id)
                await drain(service)
    assert run["status"] == "failed"
    bodies = {b["type"]: b for b in (orjson.loads(r.body) for r in receiver.requests)}
    assert set(bodies) == {"grant.created", "grant.revoked", "run.failed"}
    assert "authorize again" in bodies["run.failed"]["reason"]
    assert "authorize again" in bodies["grant.revoked"]["reason"]


@pytest.mark.parametrize(
    ("trusted", "delivered"),
    [pytest.param(False, False, id="unknown-ca-refused"), pytest.param(True, True, id="ca-file-trusted")],
)
async def test_https_receivers_are_verified(
    upstreams: Upstreams, database_url: str, token_keys: str, trusted: bool, delivered: bool
) -> None:
    async with running(Receiver(), tls=True) as receiver:
        with upstreams.router() as router:
            router.route(host="127.0.0.1").pass_through()
            settings = sync_settings(
                database_url,
                token_keys,
                webhook_urls=receiver.url,
                webhook_secret=SECRET,
                webhook_retry_wait_seconds=0,
                webhook_attempts=1,
                ca_file=CERTS / "ca.pem" if trusted else None,
            )
            async with open_service(settings) as service:
                await enrol_only(service, upstreams)
                await drain(service)
                async with service.pool.connection() as connection:
                    row = await (
                        await connection.execute("SELECT status, last_error FROM bluebutton_event_deliveries")
                    ).fetchone()
    assert row is not None
    assert (row[0], len(receiver.requests)) == (("delivered", 1) if delivered else ("failed", 0))
    if not delivered:
        assert "ConnectError" in row[1]


async def test_a_delivery_left_by_a_killed_worker_is_recovered(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    async with running(Receiver()) as receiver:
        with upstreams.router() as router:
            router.route(host="127.0.0.1").pass_through()
            settings = _settings(database_url, token_keys, receiver)
            async with open_service(settings.model_copy(update={"sync_stalled_seconds": 5})) as service:  # type: ignore[attr-defined]
                await enrol_only(service, upstreams)
                assert service.events is not None
                async with service.pool.connection() as connection:
                    (event_id,) = await (
                        await connection.execute("SELECT id FROM bluebutton_events")
                    ).fetchone()  # type: ignore[misc]
                    await connection.execute("DELETE FROM procrastinate_jobs")  # dispatched by hand below
                assert await service.events.dispatch(event_id) == 1
                # What a SIGKILLed worker leaves: the delivery job `doing`, its heartbeat old.
                async with service.pool.connection() as connection:
                    worker = await (
                        await connection.execute(
                            "INSERT INTO procrastinate_workers (last_heartbeat) "
                            "VALUES (now() - interval '1 hour') RETURNING id"
                        )
                    ).fetchone()
                    assert worker is not None
                    await connection.execute(
                        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s", (worker[0],)
                    )
                assert await service.events.recover_stalled(service.jobs.app.job_manager) == 1  # every sweep
                await drain(service)
                assert [r.headers["webhook-id"] for r in receiver.requests] == [str(event_id)]
                assert await deliveries(service, str(event_id)) == [(target_of(receiver.url), "delivered", 1)]
