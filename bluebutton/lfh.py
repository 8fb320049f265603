"""LinuxForHealth connect client: POST a Bundle to `/fhir/Bundle`, and connect's envelope model.

Each POST becomes a new Kafka record, so a POST is only resent when it certainly never arrived:
the connection could not be opened, or connect's rate limiter answered 429 before storing
anything (lfh-connect.md §6). connect sends no `Retry-After`; its window is one second.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict

from bluebutton.errors import LfhError
from bluebutton.outbound import build_client, release
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


def _detail(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:300] or "(empty body)"
    if isinstance(body, dict):
        value = body.get("detail", body.get("error", body))
        if isinstance(value, list):  # FastAPI's 422 shape
            value = "; ".join(str(item.get("msg", item)) for item in value if isinstance(item, dict))
        return str(value)[:1000]
    return str(body)[:300]


class LfhClient:
    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    @classmethod
    def create(cls, settings: Settings, context: Any) -> LfhClient:
        client = build_client(
            base_url=settings.lfh_origin,
            context=context,
            timeout=settings.lfh_timeout_seconds,
            max_connections=4,
        )
        return cls(settings, client)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post_bundle(self, body: bytes) -> StoredRecord:
        """POST one Bundle; the answer is connect's envelope or an `LfhError` saying why not."""
        origin = self._settings.lfh_origin
        connect_failures = 0
        throttled = 0
        while True:
            try:
                response = await self._client.post(
                    "/fhir/Bundle",
                    content=body,
                    headers={"Content-Type": "application/fhir+json"},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                connect_failures += 1
                if connect_failures >= CONNECT_ATTEMPTS:
                    raise LfhError(
                        f"could not connect to LinuxForHealth connect at {origin} "
                        f"({type(e).__name__}, {connect_failures} attempts); is it running?",
                        transient=True,
                    ) from e
                await asyncio.sleep(0.2 * connect_failures)
                continue
            except httpx.TimeoutException as e:
                raise LfhError(
                    f"LinuxForHealth connect did not answer within "
                    f"{self._settings.lfh_timeout_seconds:g} s; the Bundle may or may not have "
                    "been stored",
                    status_code=504,
                    code="timeout",
                ) from e
            except httpx.TransportError as e:
                raise LfhError(
                    f"the connection to LinuxForHealth connect failed after the Bundle was sent "
                    f"({type(e).__name__}); it may or may not have been stored",
                ) from e
            try:
                if response.status_code != 429 or throttled >= self._settings.lfh_rate_limit_retries:
                    return _stored_record(response)
            finally:
                release(response)
            throttled += 1
            await asyncio.sleep(self._settings.lfh_rate_limit_wait_seconds)


def _stored_record(response: httpx.Response) -> StoredRecord:
    if response.status_code != 200:
        hint = ""
        if response.status_code == 500:
            hint = " (connect answers 500 both for invalid FHIR and for a broken Kafka or a record "
            hint += "over its 1 MB limit)"
        raise LfhError(
            f"LinuxForHealth connect refused the Bundle with HTTP {response.status_code}{hint}",
            upstream_status=response.status_code,
            detail=_detail(response),
        )
    try:
        envelope = LfhEnvelope.model_validate_json(response.content)
    except ValueError as e:
        raise LfhError(
            "LinuxForHealth connect answered 200 without a storage envelope",
            upstream_status=200,
        ) from e
    if not envelope.data_record_location:
        raise LfhError(
            "LinuxForHealth connect answered 200 but gave no data_record_location",
            upstream_status=200,
        )
    return StoredRecord(envelope.uuid, envelope.data_record_location, response.content)
