"""Events on the machine's real NATS JetStream (127.0.0.1:4222): stream BLUEBUTTON, subject
bluebutton.<type>, Nats-Msg-Id = event id, so a redelivery is dropped by JetStream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import nats
import orjson
import pytest
from nats.js import JetStreamContext

from bluebutton.events.nats import STREAM
from tests.events.events import BODY_KEYS, deliveries, enrol_only
from tests.sync.emulated import Upstreams, drain, open_service, sync_settings

NATS_URL = "nats://127.0.0.1:4222"


def _nats_unavailable() -> str | None:
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=0.5).close()
    except OSError as e:
        return (
            f"no NATS server answers at {NATS_URL} ({type(e).__name__}: {e}); start nats-server --jetstream"
        )
    return None


pytestmark = pytest.mark.skipif(_nats_unavailable() is not None, reason=str(_nats_unavailable()))


@asynccontextmanager
async def jetstream_client() -> AsyncIterator[JetStreamContext]:
    """The test's own client, opened in the test's loop (nats-py binds its reader to it)."""
    client = await nats.connect(NATS_URL)
    try:
        yield client.jetstream()
    finally:
        await client.close()


async def test_an_event_is_published_once_with_its_id_as_msg_id(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    async with jetstream_client() as jetstream:
        with upstreams.router():
            async with open_service(sync_settings(database_url, token_keys, nats_url=NATS_URL)) as service:
                grant_id = await enrol_only(service, upstreams)
                await drain(service)
                stored = await jetstream.get_last_msg(STREAM, "bluebutton.grant.created")
                body = orjson.loads(stored.data or b"")
                assert body["grant_id"] == str(grant_id) and set(body) <= BODY_KEYS
                assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == body["id"]
                assert await deliveries(service, body["id"]) == [("nats", "delivered", 1)]

                before = (await jetstream.stream_info(STREAM)).state.messages
                assert service.events is not None and service.events.nats is not None
                again = await service.events.nats.publish(body["id"], "grant.created", stored.data or b"")
                assert again.duplicate
                assert (await jetstream.stream_info(STREAM)).state.messages == before


async def test_the_stream_is_created_when_missing(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    async with jetstream_client() as jetstream:
        with suppress(nats.js.errors.NotFoundError):
            await jetstream.delete_stream(STREAM)
        with upstreams.router():
            async with open_service(sync_settings(database_url, token_keys, nats_url=NATS_URL)) as service:
                await enrol_only(service, upstreams)
                await drain(service)
        info = await jetstream.stream_info(STREAM)
    assert info.config.subjects == ["bluebutton.>"]
    assert info.state.messages == 1


async def test_an_unreachable_nats_is_retried_then_marked_failed(database_url: str, token_keys: str) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    upstreams = Upstreams()
    settings = sync_settings(
        database_url,
        token_keys,
        nats_url=f"nats://127.0.0.1:{port}",
        webhook_attempts=2,
        webhook_retry_wait_seconds=0,
    )
    with upstreams.router():
        async with open_service(settings) as service:
            await enrol_only(service, upstreams)
            await drain(service)
            async with service.pool.connection() as connection:
                row = await (
                    await connection.execute(
                        "SELECT target, status, attempts, last_error FROM bluebutton_event_deliveries"
                    )
                ).fetchone()
    assert row is not None and row[:3] == ("nats", "failed", 2)
    assert str(port) not in row[3]
