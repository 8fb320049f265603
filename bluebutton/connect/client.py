"""LinuxForHealth connect client: POST a Bundle to `/fhir/Bundle`, and connect's envelope model.

The envelope model keeps connect's own name, `LfhEnvelope`: it is the schema's name in OpenAPI.

Each POST becomes a new Kafka record, so a POST is only resent when it certainly never arrived:
the connection could not be opened, or connect's rate limiter answered 429 before storing
anything (lfh-connect.md §6). connect sends no `Retry-After`; its window is one second, so the
wait before a resend is that second plus a random part: replicas throttled in the same window would
otherwise all resend at the same instant and be throttled together again.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from bluebutton.errors import (
    ConnectError,
    ConnectLocationUnknownError,
    ConnectRecordTooLargeError,
    ConnectTimeoutError,
    ConnectUnreachableError,
)
from bluebutton.outbound.client import UpstreamClient, Wrap, build_client
from bluebutton.outbound.responses import read_error_body, release
from bluebutton.outbound.retry import Sleep
from bluebutton.settings import Settings

CONNECT_ATTEMPTS = 3


class LfhEnvelope(BaseModel):
    """connect 0.42.0's storage envelope (`LinuxForHealthDataRecordResponse`), as it answers."""

    model_config = ConfigDict(extra="allow")

    uuid: str
    lfh_id: str | None = None
    operation: str | None = None
    creation_date: str | None = None
    store_date: str | None = None
    consuming_endpoint_url: str | None = None
    data: str | None = None
    data_format: str | None = None
    status: str | None = None
    data_record_location: str | None = None
    target_endpoint_urls: list[str] | None = None
    ipfs_uri: str | None = None
    elapsed_storage_time: float | None = None
    transmit_date: str | None = None
    elapsed_transmit_time: float | None = None
    elapsed_total_time: float | None = None
    transmission_attributes: dict[str, Any] | None = None


@dataclass(frozen=True)
class StoredRecord:
    """One Bundle connect stored: its envelope's identifiers, and the envelope bytes unchanged."""

    uuid: str
    location: str
    envelope: bytes


Jitter = Callable[[], float]
"""A random source in [0, 1), scaled to `BLUEBUTTON_LFH_RATE_LIMIT_JITTER_SECONDS`."""


class ConnectClient(UpstreamClient):
    """One shared client for connect; it owns (and closes) its HTTP client. `sleep` is what the
    waits between resends use and `jitter` their random part (tests pass a recorder and a fixed
    sequence)."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        sleep: Sleep = asyncio.sleep,
        jitter: Jitter = random.random,
    ) -> None:
        self._settings = settings
        super().__init__(http)
        self._sleep = sleep
        self._jitter = jitter

    @classmethod
    def create(
        cls,
        settings: Settings,
        context: ssl.SSLContext,
        *,
        wrap: Wrap | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Jitter = random.random,
    ) -> ConnectClient:
        http = build_client(
            base_url=settings.lfh_origin,
            context=context,
            timeout=settings.lfh_timeout_seconds,
            max_connections=4,
            wrap=wrap,
        )
        return cls(settings, http, sleep=sleep, jitter=jitter)

    async def post_bundle(self, body: bytes, *, timeout: float | None = None) -> StoredRecord:  # noqa: ASYNC109
        """POST one Bundle; the answer is connect's envelope or a `ConnectError` saying why not.
        `timeout` replaces BLUEBUTTON_LFH_TIMEOUT_SECONDS for this call (grant keeping's own)."""
        origin = self._settings.lfh_origin
        waited = timeout if timeout is not None else self._settings.lfh_timeout_seconds
        connect_failures = 0
        throttled = 0
        while True:
            try:
                response = await self._client.post(
                    "/fhir/Bundle",
                    content=body,
                    headers={"Content-Type": "application/fhir+json"},
                    timeout=httpx.Timeout(waited, connect=min(waited, 10.0))
                    if timeout is not None
                    else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                # None of these sent a byte: no connection, or none free in the pool.
                connect_failures += 1
                if connect_failures >= CONNECT_ATTEMPTS:
                    raise ConnectUnreachableError(
                        f"could not connect to LinuxForHealth connect at {origin} "
                        f"({type(e).__name__}, {connect_failures} attempts); is it running?"
                    ) from e
                await self._sleep(0.2 * connect_failures)
                continue
            except httpx.TimeoutException as e:
                raise ConnectTimeoutError(
                    f"LinuxForHealth connect did not answer within "
                    f"{waited:g} s: the Bundle may have been stored; "
                    "retry with the same Idempotency-Key"
                ) from e
            except httpx.TransportError as e:
                raise ConnectError(
                    f"the connection to LinuxForHealth connect failed after the Bundle was sent "
                    f"({type(e).__name__}); it may or may not have been stored",
                ) from e
            try:
                if response.status_code != 429 or throttled >= self._settings.lfh_rate_limit_retries:
                    return _stored_record(response)
            finally:
                release(response)
            throttled += 1
            await self._sleep(self.rate_limit_wait())

    def rate_limit_wait(self) -> float:
        """connect's window, then a random part, so throttled replicas spread their resends."""
        settings = self._settings
        return settings.lfh_rate_limit_wait_seconds + settings.lfh_rate_limit_jitter_seconds * self._jitter()


# connect 0.42.0's 500 for a record over its Kafka producer's 1,000,000-byte limit (lfh-connect.md
# §6). A broken Kafka gives the same text, but only after librdkafka's 300 s message timeout,
# past our BLUEBUTTON_LFH_TIMEOUT_SECONDS (120 s), so within it the answer means "too large".
RECORD_REFUSED = "is not JSON serializable"


def _stored_record(response: httpx.Response) -> StoredRecord:
    if response.status_code == 500:
        body = read_error_body(response)
        if body.detail and RECORD_REFUSED in body.detail:
            raise ConnectRecordTooLargeError(
                "LinuxForHealth connect refused the Bundle with HTTP 500: its record is over "
                "connect's 1 MB limit, so resending it cannot help; lower "
                "BLUEBUTTON_LFH_MAX_BUNDLE_BYTES (if this came after minutes, check connect's Kafka)",
                upstream_status=500,
                detail=body.detail,
            )
    if response.status_code != 200:
        hint = ""
        if response.status_code == 500:
            hint = " (connect answers 500 both for invalid FHIR and for a broken Kafka or a record "
            hint += "over its 1 MB limit)"
        raise ConnectError(
            f"LinuxForHealth connect refused the Bundle with HTTP {response.status_code}{hint}",
            upstream_status=response.status_code,
            detail=read_error_body(response).detail,
        )
    try:
        envelope = LfhEnvelope.model_validate_json(response.content)
    except ValueError as e:
        raise ConnectError(
            "LinuxForHealth connect answered 200 without a storage envelope",
            upstream_status=200,
        ) from e
    if not envelope.data_record_location:
        raise ConnectLocationUnknownError(
            "LinuxForHealth connect answered 200 but gave no data_record_location",
            record_uuid=envelope.uuid,
            envelope=response.content,
        )
    return StoredRecord(envelope.uuid, envelope.data_record_location, response.content)
