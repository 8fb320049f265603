"""The connect client: one POST per Bundle, resent only when it certainly never arrived."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import respx

import bluebutton.connect.client
from bluebutton.connect.client import ConnectClient
from bluebutton.errors import ConnectError, ConnectRecordTooLargeError, TransientUpstreamError
from bluebutton.settings import Settings
from tests.factories import TOKEN, envelope_for, make_settings
from tests.fakes import SleepRecorder
from tests.running import CONTEXT, new_connect_client

BODY = b'{"resourceType":"Bundle","type":"searchset","total":0,"entry":[]}'
# connect answers with its own formatting; the client must hand these bytes on unchanged.
ENVELOPE = orjson.dumps(envelope_for(7, BODY)).replace(b'","', b'", "')

# connect's rate-limit window is one second; the default wait matches it.
RATE_LIMIT_WAIT_SECONDS = Settings.model_fields["lfh_rate_limit_wait_seconds"].default
RATE_LIMIT_JITTER_SECONDS = Settings.model_fields["lfh_rate_limit_jitter_seconds"].default


@asynccontextmanager
async def connect_client(**overrides: Any) -> AsyncIterator[ConnectClient]:
    async with new_connect_client(make_settings(**overrides)) as client:
        yield client


def stored() -> httpx.Response:
    return httpx.Response(200, content=ENVELOPE, headers={"Content-Type": "application/json"})


def rate_limited() -> httpx.Response:
    return httpx.Response(429, json={"error": "Rate limit exceeded: 10 per 1 second"})


async def test_stored_record(connect_mock: respx.MockRouter) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(return_value=stored())
    async with connect_client() as client:
        record = await client.post_bundle(BODY)
    assert record.uuid == envelope_for(7, BODY)["uuid"]
    assert record.location == "FHIR-R4:0:7"
    assert record.envelope == ENVELOPE
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == httpx.URL("https://lfh.test/fhir/Bundle")
    assert request.content == BODY
    assert request.headers["Content-Type"] == "application/fhir+json"


async def test_no_credentials_are_sent_to_connect(connect_mock: respx.MockRouter) -> None:
    """connect stores every request header except a few in `transmission_attributes`."""
    route = connect_mock.post("/fhir/Bundle").mock(return_value=stored())
    async with connect_client() as client:
        await client.post_bundle(BODY)
    headers = {k.lower(): v for k, v in route.calls.last.request.headers.items()}
    assert not {k for k in headers if k in ("authorization", "cookie", "proxy-authorization", "x-api-key")}
    assert TOKEN not in str(headers)


async def test_rate_limited_then_stored(
    connect_mock: respx.MockRouter, connect_sleeps: SleepRecorder
) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(side_effect=[rate_limited(), rate_limited(), stored()])
    async with connect_client() as client:
        record = await client.post_bundle(BODY)
    assert record.location == "FHIR-R4:0:7"
    assert route.call_count == 3
    assert [c.request.content for c in route.calls] == [BODY] * 3
    assert len(connect_sleeps.delays) == 2
    for delay in connect_sleeps.delays:
        assert RATE_LIMIT_WAIT_SECONDS <= delay < RATE_LIMIT_WAIT_SECONDS + RATE_LIMIT_JITTER_SECONDS
    assert RATE_LIMIT_WAIT_SECONDS >= 1.0  # connect's window is one second


async def test_rate_limit_wait_is_the_window_plus_jitter(
    connect_mock: respx.MockRouter, connect_sleeps: SleepRecorder
) -> None:
    """Replicas throttled in the same second must not all resend at the same instant."""
    connect_mock.post("/fhir/Bundle").mock(side_effect=[rate_limited()] * 3 + [stored()])
    draws = iter([0.0, 0.5, 0.999])
    settings = make_settings(lfh_rate_limit_wait_seconds=1.0, lfh_rate_limit_jitter_seconds=0.5)
    async with ConnectClient.create(
        settings, CONTEXT, sleep=connect_sleeps.sleep, jitter=lambda: next(draws)
    ) as client:
        await client.post_bundle(BODY)
    assert connect_sleeps.delays == pytest.approx([1.0, 1.25, 1.4995])
    assert RATE_LIMIT_JITTER_SECONDS > 0  # on by default


async def test_every_response_is_released(
    connect_mock: respx.MockRouter, connect_sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[int] = []
    monkeypatch.setattr(
        bluebutton.connect.client, "release", lambda response: released.append(response.status_code)
    )
    connect_mock.post("/fhir/Bundle").mock(
        side_effect=[rate_limited(), stored(), httpx.Response(500, json={})]
    )
    async with connect_client() as client:
        await client.post_bundle(BODY)
        with pytest.raises(ConnectError):
            await client.post_bundle(BODY)
    assert released == [429, 200, 500]


async def test_rate_limited_for_too_long(
    connect_mock: respx.MockRouter, connect_sleeps: SleepRecorder
) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(return_value=rate_limited())
    async with connect_client(lfh_rate_limit_retries=3) as client:
        with pytest.raises(ConnectError) as info:
            await client.post_bundle(BODY)
    assert route.call_count == 4
    assert info.value.status_code == 502
    assert info.value.upstream_status == 429


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
async def test_connection_not_opened_is_retried(
    connect_mock: respx.MockRouter, connect_sleeps: SleepRecorder, failure: type[Exception]
) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(
        side_effect=[failure("refused"), failure("refused"), stored()]
    )
    async with connect_client() as client:
        record = await client.post_bundle(BODY)
    assert record.uuid
    assert route.call_count == 3


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout])
async def test_connect_unreachable(
    connect_mock: respx.MockRouter, connect_sleeps: SleepRecorder, failure: type[Exception]
) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(side_effect=failure("refused"))
    async with connect_client() as client:
        with pytest.raises(ConnectError) as info:
            await client.post_bundle(BODY)
    assert route.call_count >= 2
    assert info.value.status_code == 502
    assert "LinuxForHealth connect" in info.value.issues()[0].diagnostics
    assert "https://lfh.test" in info.value.message


MAY_BE_STORED = "may have been stored; retry with the same Idempotency-Key"


@pytest.mark.parametrize(
    ("failure", "status", "says"),
    [
        pytest.param(httpx.ReadTimeout("slow"), 504, MAY_BE_STORED, id="ReadTimeout"),
        pytest.param(httpx.WriteTimeout("slow"), 504, MAY_BE_STORED, id="WriteTimeout"),
        pytest.param(httpx.ReadError("reset"), 502, "may or may not", id="ReadError"),
        pytest.param(httpx.RemoteProtocolError("eof"), 502, "may or may not", id="RemoteProtocolError"),
        pytest.param(httpx.WriteError("broken pipe"), 502, "may or may not", id="WriteError"),
    ],
)
async def test_a_post_that_may_have_arrived_is_not_resent(
    connect_mock: respx.MockRouter,
    connect_sleeps: SleepRecorder,
    failure: Exception,
    status: int,
    says: str,
) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(side_effect=failure)
    async with connect_client() as client:
        with pytest.raises(ConnectError) as info:
            await client.post_bundle(BODY)
    assert route.call_count == 1
    assert info.value.status_code == status
    assert says in info.value.message


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        pytest.param(
            httpx.Response(500, json={"detail": "Object of type Bundle is not JSON serializable"}),
            "Object of type Bundle is not JSON serializable",
            id="500-kafka",
        ),
        pytest.param(
            httpx.Response(500, json={"detail": "1 validation error for Bundle\nentry -> 0"}),
            "1 validation error for Bundle",
            id="500-invalid-fhir",
        ),
        pytest.param(
            httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "field required"}]}),
            "field required",
            id="422-list",
        ),
        pytest.param(
            httpx.Response(404, json={"detail": "/Bundle not found"}), "/Bundle not found", id="404"
        ),
        pytest.param(
            httpx.Response(503, text="upstream connect error"), "upstream connect error", id="503-text"
        ),
    ],
)
async def test_refusal_passes_connects_status_and_detail_on(
    connect_mock: respx.MockRouter, response: httpx.Response, detail: str
) -> None:
    route = connect_mock.post("/fhir/Bundle").mock(return_value=response)
    async with connect_client() as client:
        with pytest.raises(ConnectError) as info:
            await client.post_bundle(BODY)
    assert route.call_count == 1
    error = info.value
    assert error.status_code == 502
    assert error.upstream_status == response.status_code
    text = error.issues()[0].diagnostics
    assert "LinuxForHealth connect" in text
    assert str(response.status_code) in text
    assert detail in text


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"foo": 1}', id="no-uuid"),
        pytest.param(b"<html>ok</html>", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"", id="empty"),
        pytest.param(orjson.dumps({"uuid": "u-1", "data_record_location": None}), id="no-location"),
    ],
)
async def test_200_without_an_envelope(connect_mock: respx.MockRouter, content: bytes) -> None:
    connect_mock.post("/fhir/Bundle").mock(return_value=httpx.Response(200, content=content))
    async with connect_client() as client:
        with pytest.raises(ConnectError) as info:
            await client.post_bundle(BODY)
    assert info.value.status_code == 502
    assert info.value.upstream_status == 200
    assert "LinuxForHealth connect" in info.value.issues()[0].diagnostics


async def test_envelope_with_unknown_fields_is_accepted(connect_mock: respx.MockRouter) -> None:
    envelope = orjson.dumps({**envelope_for(1, BODY), "future_field": {"x": 1}})
    connect_mock.post("/fhir/Bundle").mock(return_value=httpx.Response(200, content=envelope))
    async with connect_client() as client:
        record = await client.post_bundle(BODY)
    assert record.envelope == envelope


async def test_connects_size_refusal_is_permanent_and_says_so(connect_mock: respx.MockRouter) -> None:
    refusal = httpx.Response(500, json={"detail": "Object of type Bundle is not JSON serializable"})
    route = connect_mock.post("/fhir/Bundle").mock(return_value=refusal)
    async with connect_client() as client:
        with pytest.raises(ConnectRecordTooLargeError) as info:
            await client.post_bundle(BODY)

    assert route.call_count == 1
    error = info.value
    assert not isinstance(error, TransientUpstreamError)
    assert (error.status_code, error.upstream_status) == (502, 500)
    (issue,) = error.issues()
    assert issue.code == "too-costly"
    assert "1 MB limit" in issue.diagnostics
    assert "BLUEBUTTON_LFH_MAX_BUNDLE_BYTES" in issue.diagnostics


async def test_connects_other_500s_are_not_called_a_size_refusal(connect_mock: respx.MockRouter) -> None:
    invalid = httpx.Response(500, json={"detail": "1 validation error for Bundle\nentry -> 0"})
    connect_mock.post("/fhir/Bundle").mock(return_value=invalid)
    async with connect_client() as client:
        with pytest.raises(ConnectError) as info:
            await client.post_bundle(BODY)

    assert not isinstance(info.value, ConnectRecordTooLargeError)
    assert "cannot help" not in info.value.message
