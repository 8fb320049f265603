"""Events onto NATS JetStream: stream `BLUEBUTTON`, subject `bluebutton.<type>`, `Nats-Msg-Id`.

JetStream drops a message whose `Nats-Msg-Id` it has seen within the stream's duplicate window
(2 minutes by default), so an event published again after a worker crash is stored once. The
connection opens on first use: a web process that never delivers never connects.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from bluebutton.settings import Settings

logger = logging.getLogger(__name__)

STREAM = "BLUEBUTTON"
SUBJECTS = ["bluebutton.>"]


class NatsUnavailableError(Exception):
    """NATS could not be reached or refused the message; the delivery job retries."""


def subject_of(event_type: str) -> str:
    return f"bluebutton.{event_type}"


class NatsPublisher:
    def __init__(self, settings: Settings, context: ssl.SSLContext) -> None:
        assert settings.nats_url is not None
        self._url = settings.nats_url.get_secret_value()
        self._seed = settings.nats_nkey_seed_file
        self._context = context
        self._client: Client | None = None
        self._stream: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    async def _error(self, e: Exception) -> None:
        # The default callback logs the exception text, which can name the server URL.
        logger.warning("NATS connection error: %s", type(e).__name__)

    async def _jetstream(self) -> JetStreamContext:
        async with self._lock:
            if self._stream is not None and self._client is not None and self._client.is_connected:
                return self._stream
            options: dict[str, Any] = {
                "servers": [self._url],
                "connect_timeout": 5,
                "max_reconnect_attempts": 3,
                "error_cb": self._error,
            }
            if self._url.startswith("tls://"):
                options["tls"] = self._context
            if self._seed is not None:
                options["nkeys_seed"] = str(self._seed)
            try:
                self._client = await nats.connect(**options)
            except Exception as e:  # nats-py raises its own and OSError variants
                raise NatsUnavailableError(f"cannot connect to NATS ({type(e).__name__})") from e
            stream = self._client.jetstream()
            try:
                await stream.stream_info(STREAM)
            except NotFoundError:
                await stream.add_stream(name=STREAM, subjects=SUBJECTS)
                logger.info("created the JetStream stream %s", STREAM)
            self._stream = stream
            return stream

    async def publish(self, event_id: str, event_type: str, body: bytes) -> PubAck:
        stream = await self._jetstream()
        try:
            return await stream.publish(
                subject_of(event_type), body, timeout=10.0, stream=STREAM, headers={"Nats-Msg-Id": event_id}
            )
        except Exception as e:
            raise NatsUnavailableError(f"JetStream did not acknowledge the event ({type(e).__name__})") from e

    async def aclose(self) -> None:
        if self._client is not None and not self._client.is_closed:
            await self._client.close()
