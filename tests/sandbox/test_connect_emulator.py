"""The connect emulator against connect 0.42.0's contract (/work/shared/reference/lfh-connect.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from bluebutton.sandbox.connect.app import ConnectSandboxApp, ConnectSandboxConfig, create_connect_app
from bluebutton.sandbox.connect.config import CERT_DIR, parse_args
from bluebutton.sandbox.connect.listener import bind_server

ENVELOPE_FIELDS = [
    "uuid",
    "lfh_id",
    "operation",
    "creation_date",
    "store_date",
    "consuming_endpoint_url",
    "data",
    "data_format",
    "status",
    "data_record_location",
    "target_endpoint_urls",
    "ipfs_uri",
    "elapsed_storage_time",
    "transmit_date",
    "elapsed_transmit_time",
    "elapsed_total_time",
    "transmission_attributes",
]
KAFKA_DOWN = {"detail": "Object of type Bundle is not JSON serializable"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_bundle(**extra: Any) -> dict[str, Any]:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Müller", "given": ["Jane"]}],  # non-ASCII: stored \u-escaped
        "birthDate": "1950-01-02",
    }
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}], **extra}


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., ConnectSandboxApp]:
    def make(
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **overrides: Any,
    ) -> ConnectSandboxApp:
        settings: dict[str, Any] = {"db": tmp_path / "connect.sqlite3", "lfh_id": "lfh-test", "rate_limit": 0}
        config = ConnectSandboxConfig(**{**settings, **overrides})
        return create_connect_app(config, clock=clock, sleep=sleep)

    return make


@asynccontextmanager
async def serve(app: ConnectSandboxApp) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        yield client


@pytest.fixture
async def client(make_app: Callable[..., ConnectSandboxApp]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app()) as client:
        yield client


async def record_count(client: httpx.AsyncClient) -> int:
    return int((await client.get("/_sandbox/records")).json()["count"])


# --- success --------------------------------------------------------------------------------


async def test_success_returns_the_17_field_envelope(client: httpx.AsyncClient) -> None:
    sent = a_bundle()
    response = await client.post("/fhir/Bundle", json=sent)

    assert response.status_code == 200
    envelope = response.json()
    assert list(envelope) == ENVELOPE_FIELDS
    assert len(envelope["uuid"]) == 36 and envelope["uuid"][14] == "4"
    assert envelope["lfh_id"] == "lfh-test"
    assert envelope["operation"] == "POST"
    assert envelope["creation_date"] == envelope["store_date"]
    assert len(envelope["creation_date"]) == 25 and envelope["creation_date"].endswith("+00:00")
    assert envelope["consuming_endpoint_url"] == "/fhir/Bundle"
    assert envelope["data_format"] == "FHIR-R4"
    assert envelope["status"] == "success"
    assert envelope["data_record_location"] == "FHIR-R4:0:0"
    assert envelope["target_endpoint_urls"] == []
    assert envelope["ipfs_uri"] is None
    assert envelope["transmit_date"] is None and envelope["elapsed_transmit_time"] is None
    assert 0 <= envelope["elapsed_storage_time"] <= envelope["elapsed_total_time"]
    assert envelope["transmission_attributes"]["content-type"] == "application/json"
    # `data` is the body re-serialised with json.dumps defaults (", ", ": ", ASCII escapes).
    stored = base64.b64decode(envelope["data"])
    assert stored == json.dumps(sent).encode()
    assert b"M\\u00fcller" in stored and b'"type": "collection"' in stored
    assert json.loads(stored) == sent


async def test_offsets_increase_and_are_in_storage_order(client: httpx.AsyncClient) -> None:
    locations = [
        (await client.post("/fhir/Bundle", json=a_bundle())).json()["data_record_location"] for _ in range(3)
    ]
    assert locations == ["FHIR-R4:0:0", "FHIR-R4:0:1", "FHIR-R4:0:2"]


async def test_transmission_attributes_drop_credentials_like_connect(client: httpx.AsyncClient) -> None:
    headers = {
        "Authorization": "Bearer secret",
        "X-Api-Token": "t",
        "X-Password": "p",
        "X-Db-Pwd": "p",
        "X-Api-Key": "kept",
        "Cookie": "kept=1",
    }
    response = await client.post("/fhir/Bundle", json=a_bundle(), headers=headers)

    attributes = response.json()["transmission_attributes"]
    assert attributes["x-api-key"] == "kept" and attributes["cookie"] == "kept=1"
    assert not {"authorization", "x-api-token", "x-password", "x-db-pwd"} & set(attributes)


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="missing"),
        pytest.param("application/json", id="json"),
        pytest.param("APPLICATION/JSON", id="upper-case"),
        pytest.param("application/fhir+json; charset=utf-8", id="fhir+json"),
    ],
)
async def test_json_content_types_are_parsed(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/fhir/Bundle", content=json.dumps(a_bundle()).encode(), headers=headers)
    assert response.status_code == 200


async def test_a_list_of_pairs_passes_the_dict_check_like_pydantic_v1(client: httpx.AsyncClient) -> None:
    response = await client.post("/fhir/Bundle", json=[["resourceType", "Bundle"], ["type", "collection"]])
    assert response.status_code == 200


async def test_datatype_names_are_routed_like_connect(client: httpx.AsyncClient) -> None:
    response = await client.post("/fhir/HumanName", json={"resourceType": "HumanName", "family": "Doe"})
    assert response.status_code == 200
    assert response.json()["consuming_endpoint_url"] == "/fhir/HumanName"


# --- request errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "error"),
    [
        pytest.param(b"", "application/json", {"loc": ["body"], "msg": "field required"}, id="empty"),
        pytest.param(b"null", "application/json", {"loc": ["body"], "msg": "field required"}, id="null"),
        pytest.param(b"[1, 2]", "application/json", {"loc": ["body"], "type": "type_error.dict"}, id="array"),
        pytest.param(
            b'"text"', "application/json", {"loc": ["body"], "type": "type_error.dict"}, id="string"
        ),
        pytest.param(
            b"{}", "text/plain", {"loc": ["body"], "msg": "value is not a valid dict"}, id="text/plain"
        ),
        pytest.param(b"a=1", "application/x-www-form-urlencoded", {"type": "type_error.dict"}, id="form"),
    ],
)
async def test_bodies_fastapi_rejects_get_a_list_shaped_422(
    client: httpx.AsyncClient, content: bytes, content_type: str, error: dict[str, Any]
) -> None:
    response = await client.post("/fhir/Bundle", content=content, headers={"content-type": content_type})

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem.items() >= error.items()
    assert await record_count(client) == 0


async def test_malformed_json_is_a_jsondecode_422_without_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/fhir/Bundle", content=b'{"SECRET": ', headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["type"] == "value_error.jsondecode"
    assert problem["loc"] == ["body", 11]
    assert problem["msg"].startswith("Expecting value: line 1 column 12")
    assert "doc" not in problem["ctx"] and "SECRET" not in response.text


async def test_undecodable_bytes_are_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/fhir/Bundle", content=b'{"a": "\xff"}', headers={"content-type": "application/json"}
    )
    assert (response.status_code, response.json()) == (400, {"detail": "There was an error parsing the body"})


@pytest.mark.parametrize("resource_type", ["bundle", "Foo", "fhirtypes"])
async def test_unknown_resource_types_are_404(client: httpx.AsyncClient, resource_type: str) -> None:
    response = await client.post(f"/fhir/{resource_type}", json={"resourceType": resource_type})
    assert (response.status_code, response.json()) == (404, {"detail": f"/{resource_type} not found"})


@pytest.mark.parametrize(
    ("body", "found"),
    [
        pytest.param({"resourceType": "Patient"}, "Patient", id="different"),
        pytest.param({}, "None", id="missing"),
    ],
)
async def test_resource_type_mismatch_is_a_string_422(
    client: httpx.AsyncClient, body: dict[str, Any], found: str
) -> None:
    response = await client.post("/fhir/Bundle", json=body)
    expected = {"detail": f"resource type {found} in request does not match url /Bundle"}
    assert (response.status_code, response.json()) == (422, expected)


async def test_invalid_fhir_is_a_500_with_pydantic_text_and_no_values(client: httpx.AsyncClient) -> None:
    body = a_bundle(total="SECRET-total")
    body["entry"][0]["resource"]["bogusField"] = "SECRET-extra"

    response = await client.post("/fhir/Bundle", json=body)

    assert response.status_code == 500
    text = response.json()["detail"]
    assert text.startswith("2 validation errors for Bundle\n")
    assert "\nentry -> 0 -> resource -> bogusField\n  " in text
    assert "\ntotal\n  " in text
    assert "SECRET" not in text
    assert await record_count(client) == 0


async def test_unknown_nested_resource_type_is_a_500_without_echo(client: httpx.AsyncClient) -> None:
    body = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "SECRETType"}}],
    }
    response = await client.post("/fhir/Bundle", json=body)
    assert response.status_code == 500
    assert response.json()["detail"].startswith("1 validation error for Bundle\n")
    assert "SECRET" not in response.text


async def test_trailing_slash_redirects_without_storing(client: httpx.AsyncClient) -> None:
    response = await client.post("/fhir/Bundle/", json=a_bundle())
    assert response.status_code == 307
    assert response.headers["location"] == "http://test/fhir/Bundle"
    assert await record_count(client) == 0


async def test_starlette_errors_are_json_like_connect(client: httpx.AsyncClient) -> None:
    assert (await client.get("/fhir/Bundle")).json() == {"detail": "Method Not Allowed"}
    missing = await client.get("/nowhere")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})


# --- record size limit ----------------------------------------------------------------------


async def test_record_size_limit_matches_the_measured_boundary(client: httpx.AsyncClient) -> None:
    # Envelopes of 999,964 bytes were stored by the real connect, 999,965 refused (§6). The body
    # stays fixed (so does content-length); a header, kept in transmission_attributes, adds bytes.
    body = a_bundle(identifier={"value": ""})
    body["identifier"]["value"] = "x" * (749_100 - len(json.dumps(body)))

    async def post(pad: int) -> httpx.Response:
        return await client.post("/fhir/Bundle", json=body, headers={"x-pad": "p" * pad})

    assert (await post(100)).status_code == 200
    first = (await client.get("/_sandbox/records")).json()["records"][0]["bytes"]
    pad = 100 + 999_964 - first

    just_under = await post(pad)
    assert just_under.status_code == 200
    assert (await client.get("/_sandbox/records")).json()["records"][1]["bytes"] == 999_964

    just_over = await post(pad + 1)
    assert (just_over.status_code, just_over.json()) == (500, KAFKA_DOWN)
    assert await record_count(client) == 2


# --- rate limit -----------------------------------------------------------------------------


async def test_eleventh_request_in_a_second_is_429_and_not_stored(
    make_app: Callable[..., ConnectSandboxApp],
) -> None:
    clock = FakeClock()
    async with serve(make_app(clock=clock, rate_limit=10)) as client:
        answers = [
            (await client.post("/fhir/Bundle", json={"resourceType": "Patient"})).status_code
            for _ in range(4)
        ]
        answers += [(await client.post("/fhir/Bundle", json=a_bundle())).status_code for _ in range(6)]
        assert answers == [422] * 4 + [200] * 6  # refused requests count too

        over = await client.post("/fhir/Bundle", json=a_bundle())
        assert (over.status_code, over.json()) == (429, {"error": "Rate limit exceeded: 10 per 1 second"})
        assert "retry-after" not in over.headers
        assert await record_count(client) == 6

        # slowapi scopes its default limit by path: other paths have their own budget.
        assert (await client.get("/status")).status_code == 200
        clock.now += 1.0  # a new fixed window
        assert (await client.post("/fhir/Bundle", json=a_bundle())).status_code == 200


async def test_404_answers_count_against_the_limit(make_app: Callable[..., ConnectSandboxApp]) -> None:
    async with serve(make_app(clock=FakeClock(), rate_limit=10)) as client:
        answers = [(await client.post("/fhir/Nope", json={})).status_code for _ in range(11)]
    assert answers == [404] * 10 + [429]


async def test_rate_limit_zero_is_off_and_adjustable_at_runtime(
    make_app: Callable[..., ConnectSandboxApp],
) -> None:
    async with serve(make_app(clock=FakeClock(), rate_limit=0)) as client:
        answers = {(await client.post("/fhir/Bundle", json=a_bundle())).status_code for _ in range(25)}
        assert answers == {200}

        await client.put("/_sandbox/faults", json={"rate_limit": 2})
        answers = {(await client.post("/fhir/Nope", json={})).status_code for _ in range(3)}
        assert answers == {404, 429}
        assert (await client.post("/fhir/Nope", json={})).json() == {
            "error": "Rate limit exceeded: 2 per 1 second"
        }


# --- persistence and /data ------------------------------------------------------------------


async def test_records_survive_a_restart_and_offsets_carry_on(
    make_app: Callable[..., ConnectSandboxApp],
) -> None:
    async with serve(make_app()) as client:
        first = (await client.post("/fhir/Bundle", json=a_bundle())).json()
        await client.post("/fhir/Bundle", json=a_bundle())

    async with serve(make_app()) as client:
        third = (await client.post("/fhir/Bundle", json=a_bundle())).json()
        read_back = await client.get("/data", params={"dataformat": "FHIR-R4", "partition": 0, "offset": 0})

    assert third["data_record_location"] == "FHIR-R4:0:2"
    assert read_back.json()["uuid"] == first["uuid"]


async def test_data_returns_the_envelope_as_stored(client: httpx.AsyncClient) -> None:
    sent = a_bundle()
    envelope = (await client.post("/fhir/Bundle", json=sent)).json()
    topic, partition, offset = str(envelope["data_record_location"]).split(":")

    response = await client.get(
        "/data", params={"dataformat": topic, "partition": partition, "offset": offset}
    )

    assert response.status_code == 200
    stored = response.json()
    assert list(stored) == ENVELOPE_FIELDS
    # Kafka got the envelope before the delivery fields were filled in (core.py l.99-123).
    delivery = ["status", "data_record_location", "elapsed_storage_time", "elapsed_total_time"]
    assert all(stored[name] is None for name in delivery)
    assert {k: v for k, v in stored.items() if k not in delivery} == {
        k: v for k, v in envelope.items() if k not in delivery
    }
    assert json.loads(base64.b64decode(stored["data"])) == sent


async def test_data_query_errors(client: httpx.AsyncClient) -> None:
    await client.post("/fhir/Bundle", json=a_bundle())

    none = await client.get("/data")
    assert none.status_code == 422
    assert [e["loc"] for e in none.json()["detail"]] == [
        ["query", "dataformat"],
        ["query", "partition"],
        ["query", "offset"],
    ]

    not_int = await client.get("/data", params={"dataformat": "FHIR-R4", "partition": 0, "offset": "x"})
    assert not_int.status_code == 422
    assert not_int.json()["detail"] == [
        {"loc": ["query", "offset"], "msg": "value is not a valid integer", "type": "type_error.integer"}
    ]

    wrong: list[dict[str, str | int]] = [
        {"offset": 1},
        {"offset": -1},
        {"dataformat": "X12"},
        {"partition": 1},
    ]
    for params in wrong:
        query: dict[str, str | int] = {"dataformat": "FHIR-R4", "partition": 0, "offset": 0, **params}
        assert (await client.get("/data", params=query)).status_code == 404, params


async def test_status(client: httpx.AsyncClient) -> None:
    status = (await client.get("/status")).json()
    assert status["application_version"] == "0.42.0"
    assert status["is_reload_enabled"] is False
    assert (status["nats_client_status"], status["kafka_broker_status"]) == ("CONNECTED", "AVAILABLE")
    assert status["status_response_time"] >= 0 and status["metrics"] == {}
    assert set(status) == {
        "application",
        "application_version",
        "is_reload_enabled",
        "nats_client_status",
        "kafka_broker_status",
        "status_response_time",
        "metrics",
    }


# --- validation switch ----------------------------------------------------------------------


async def test_no_validate_stores_an_invalid_bundle(make_app: Callable[..., ConnectSandboxApp]) -> None:
    invalid = a_bundle(total="many", bogusField=1)
    async with serve(make_app(validate=False)) as client:
        response = await client.post("/fhir/Bundle", json=invalid)
        assert response.status_code == 200
        assert json.loads(base64.b64decode(response.json()["data"])) == invalid
        # The envelope checks before validation still apply.
        assert (await client.post("/fhir/Bundle", json={"resourceType": "Patient"})).status_code == 422


async def test_validation_can_be_switched_at_runtime(client: httpx.AsyncClient) -> None:
    invalid = a_bundle(total="many")
    assert (await client.put("/_sandbox/faults", json={"validate": False})).json()["validate"] is False
    assert (await client.post("/fhir/Bundle", json=invalid)).status_code == 200
    await client.put("/_sandbox/faults", json={})
    assert (await client.post("/fhir/Bundle", json=invalid)).status_code == 500


# --- faults and records ---------------------------------------------------------------------


async def test_faults_start_at_the_configured_values(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_sandbox/faults")).json() == {
        "latency_ms": 0,
        "fail_next": 0,
        "fail_after": None,
        "down": False,
        "validate": True,
        "rate_limit": 0,
        "throttle_next": 0,
        "null_location_share": 0.0,
        "null_location_next": 0,
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"latency_ms": -1}, id="negative"),
        pytest.param({"bogus": 1}, id="unknown-key"),
        pytest.param({"fhir_validation": False}, id="field-name-not-alias"),
        pytest.param({"down": "maybe"}, id="not-bool"),
    ],
)
async def test_invalid_fault_documents_are_422_and_change_nothing(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    await client.put("/_sandbox/faults", json={"fail_next": 1})
    response = await client.put("/_sandbox/faults", json=body)
    assert response.status_code == 422
    assert (await client.get("/_sandbox/faults")).json()["fail_next"] == 1


async def test_fault_document_must_be_a_json_object(client: httpx.AsyncClient) -> None:
    assert (await client.put("/_sandbox/faults", json=[1])).status_code == 400
    assert (await client.put("/_sandbox/faults", content=b"{")).status_code == 400


async def test_latency_delays_every_post(make_app: Callable[..., ConnectSandboxApp]) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # records the delay instead of timing it
        slept.append(seconds)

    async with serve(make_app(sleep=sleep)) as client:
        await client.put("/_sandbox/faults", json={"latency_ms": 150})
        for path in ("/fhir/Bundle", "/fhir/Nope"):
            await client.post(path, json=a_bundle())
        assert slept == [0.15, 0.15]
        assert (await client.get("/status")).status_code == 200
        assert slept == [0.15, 0.15]  # only `POST /fhir` is slowed
        assert await record_count(client) == 1  # the slow answer still stored the record


async def test_throttle_next_refuses_that_many_posts_with_429_then_recovers(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/_sandbox/faults", json={"throttle_next": 2})

    answers = [await client.post("/fhir/Bundle", json=a_bundle()) for _ in range(3)]
    # Other endpoints keep their own budget, as under slowapi.
    assert (await client.get("/status")).status_code == 200

    limit = {"error": "Rate limit exceeded: 10 per 1 second"}  # connect's text with its default
    assert [(r.status_code, r.json()) for r in answers[:2]] == [(429, limit)] * 2
    assert "retry-after" not in answers[0].headers  # slowapi sends none
    assert answers[2].status_code == 200
    assert (await client.get("/_sandbox/faults")).json()["throttle_next"] == 0
    assert await record_count(client) == 1


async def test_fail_next_fails_that_many_writes_then_recovers(client: httpx.AsyncClient) -> None:
    await client.put("/_sandbox/faults", json={"fail_next": 2})

    first = await client.post("/fhir/Bundle", json=a_bundle())
    # A request refused before the Kafka write does not use up a failure.
    assert (await client.post("/fhir/Bundle", json={"resourceType": "Patient"})).status_code == 422
    assert (await client.get("/_sandbox/faults")).json()["fail_next"] == 1
    second = await client.post("/fhir/Bundle", json=a_bundle())
    third = await client.post("/fhir/Bundle", json=a_bundle())

    assert [(r.status_code, r.json()) for r in (first, second)] == [(500, KAFKA_DOWN)] * 2
    assert third.json()["data_record_location"] == "FHIR-R4:0:0"
    assert await record_count(client) == 1


async def test_fail_after_stores_n_then_fails_until_reset(client: httpx.AsyncClient) -> None:
    await client.put("/_sandbox/faults", json={"fail_after": 2})

    answers = [(await client.post("/fhir/Bundle", json=a_bundle())).status_code for _ in range(5)]
    assert answers == [200, 200, 500, 500, 500]
    assert (await client.get("/_sandbox/faults")).json()["fail_after"] == 0
    assert await record_count(client) == 2

    await client.put("/_sandbox/faults", json={})
    assert (await client.post("/fhir/Bundle", json=a_bundle())).status_code == 200


async def test_down_in_process_raises_but_admin_still_answers(client: httpx.AsyncClient) -> None:
    await client.put("/_sandbox/faults", json={"down": True})

    with pytest.raises(ConnectionResetError):
        await client.post("/fhir/Bundle", json=a_bundle())
    with pytest.raises(ConnectionResetError):
        await client.get("/status")
    assert (await client.get("/_sandbox/faults")).json()["down"] is True

    await client.put("/_sandbox/faults", json={})
    assert (await client.post("/fhir/Bundle", json=a_bundle())).status_code == 200


@asynccontextmanager
async def on_sockets(
    app: ConnectSandboxApp, *, control: bool = True
) -> AsyncIterator[tuple[str, str | None]]:
    """The emulator served by uvicorn over TLS on loopback, as `python -m ...connect` serves it;
    yields the service and control base URLs."""
    server, sockets, port = bind_server(
        app,
        "127.0.0.1",
        0,
        0 if control else None,
        ssl_certfile=CERT_DIR / "server.pem",
        ssl_keyfile=CERT_DIR / "server.key",
        access_log=False,
        log_level="warning",
    )
    app.sandbox.port = port
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn.Server only exposes a flag
            await asyncio.sleep(0.01)
        control_url = f"https://localhost:{port.control_port}" if port.control_port is not None else None
        yield f"https://localhost:{port.port}", control_url
    finally:
        server.should_exit = True
        await task


TRUST = ssl.create_default_context(cafile=str(CERT_DIR / "ca.pem"))


async def test_down_refuses_connections_until_the_control_port_brings_it_back(
    make_app: Callable[..., ConnectSandboxApp],
) -> None:
    async with (
        on_sockets(make_app()) as (service_url, control_url),
        httpx.AsyncClient(base_url=service_url, verify=TRUST) as client,
        httpx.AsyncClient(base_url=str(control_url), verify=TRUST) as control,
    ):
        assert (await client.get("/status")).status_code == 200  # leaves a keep-alive connection
        assert (await control.get("/status")).json() == {"detail": "Not Found"}  # controls only
        assert (await control.put("/_sandbox/faults", json={"down": True})).json()["down"] is True

        # the pooled connection was closed and a new one is refused: no HTTP answer at all
        with pytest.raises(httpx.ConnectError):
            await client.post("/fhir/Bundle", json=a_bundle())
        async with httpx.AsyncClient(base_url=service_url, verify=TRUST) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get("/status")
        assert (await control.get("/_sandbox/records")).json()["count"] == 0

        assert (await control.put("/_sandbox/faults", json={})).json()["down"] is False
        assert (await client.post("/fhir/Bundle", json=a_bundle())).status_code == 200
        assert (await control.get("/_sandbox/records")).json()["count"] == 1


async def test_down_asked_on_the_service_port_is_answered_then_the_port_closes(
    make_app: Callable[..., ConnectSandboxApp],
) -> None:
    async with (
        on_sockets(make_app(), control=False) as (service_url, _),
        httpx.AsyncClient(base_url=service_url, verify=TRUST) as client,
    ):
        answer = await client.put("/_sandbox/faults", json={"down": True})
        assert (answer.status_code, answer.json()["down"]) == (200, True)
        # The answer goes out before the listener closes: a request may still meet the closing
        # keep-alive connection (dropped without an answer) or a listener about to go. Wait for the
        # refusal, not for a time; it must come.
        for _ in range(400):
            async with httpx.AsyncClient(base_url=service_url, verify=TRUST) as fresh:
                try:
                    await fresh.get("/_sandbox/faults")
                except httpx.ConnectError:
                    break  # refused: without a control port, only a restart helps
                except httpx.RemoteProtocolError:
                    pass  # accepted as the listener went, then dropped: not yet refused
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the service port never closed after down")


async def test_records_list_and_clear_keep_offsets_growing(client: httpx.AsyncClient) -> None:
    uuids = [(await client.post("/fhir/Bundle", json=a_bundle())).json()["uuid"] for _ in range(2)]

    listing = (await client.get("/_sandbox/records")).json()
    assert listing["count"] == 2
    assert [(r["offset"], r["uuid"]) for r in listing["records"]] == list(enumerate(uuids))
    assert all(r["bytes"] > 500 for r in listing["records"])

    assert (await client.delete("/_sandbox/records")).json() == {"deleted": 2}
    assert await record_count(client) == 0
    after = (await client.post("/fhir/Bundle", json=a_bundle())).json()
    assert after["data_record_location"] == "FHIR-R4:0:2"  # like Kafka, offsets are never reused


# --- command line ---------------------------------------------------------------------------


def test_cli_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [key for key in os.environ if key.startswith("BLUEBUTTON_SANDBOX_CONNECT_")]:
        monkeypatch.delenv(name)
    config = parse_args([])
    assert (config.host, config.port, config.tls) == ("127.0.0.1", 5000, True)
    assert config.tls_cert.is_file() and config.tls_key.is_file()
    assert (config.db, config.rate_limit, config.max_record_bytes, config.validate) == (
        Path("connect-sandbox.sqlite3"),
        10,
        1_000_000,
        True,
    )
    assert config.lfh_id


def test_cli_reads_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLUEBUTTON_SANDBOX_CONNECT_PORT", "5001")
    monkeypatch.setenv("BLUEBUTTON_SANDBOX_CONNECT_NO_TLS", "true")
    monkeypatch.setenv("BLUEBUTTON_SANDBOX_CONNECT_RATE_LIMIT", "3")
    monkeypatch.setenv("BLUEBUTTON_SANDBOX_CONNECT_LFH_ID", "lfh-env")
    monkeypatch.setenv("BLUEBUTTON_SANDBOX_CONNECT_LOG_LEVEL", "warning")
    config = parse_args(
        ["--port", "6000", "--no-validate", "--max-record-bytes", "5000", "--db", "/tmp/c.db"]
    )
    assert (config.port, config.tls, config.rate_limit, config.lfh_id) == (6000, False, 3, "lfh-env")
    assert config.log_level == "warning"
    assert (config.validate, config.max_record_bytes, config.db) == (False, 5000, Path("/tmp/c.db"))


@pytest.mark.parametrize(
    "argv", [["--rate-limit", "-1"], ["--port", "x"], ["--max-record-bytes", "10"], ["--log-level", "loud"]]
)
def test_cli_refuses_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


# --- connect's re-serialisation, its Kafka callback race, duplicate counts --------------------


def a_typed_bundle() -> dict[str, Any]:
    """Every element kind connect 0.42.0 writes differently from what it got."""
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"lastUpdated": "2024-03-01T10:00:00.978Z"},
        "status": "final",
        "code": {"text": "Größe 東京😀"},
        "effectiveDateTime": "2024-03-01",
        "issued": "2024-03-01T10:00:00-05:00",
        "valueQuantity": {"value": 2, "unit": "cm"},
        "extension": [
            {"url": "http://x/decimal", "valueDecimal": 0.978},
            {"url": "http://x/exponent", "valueDecimal": 1e15},
            {"url": "http://x/text-decimal", "valueDecimal": "1.50"},
            {"url": "http://x/partial", "valueDateTime": "2024-03"},
            {"url": "http://x/time", "valueTime": "10:00:00.1"},
            {"url": "http://x/binary", "valueBase64Binary": "QUJD"},
            {"url": "http://x/boolean", "valueBoolean": True},
            {"url": "http://x/integer", "valueInteger": 7},
            {"url": "http://x/uuid", "valueUuid": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"},
        ],
    }
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation}]}


async def test_data_is_the_body_as_connect_reserialises_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/fhir/Bundle", json=a_typed_bundle())

    assert response.status_code == 200
    stored = base64.b64decode(response.json()["data"]).decode("ascii")
    expected = (
        '{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
        '{"resourceType": "Observation", "id": "o1", '
        '"meta": {"lastUpdated": "2024-03-01T10:00:00.978000+00:00"}, "status": "final", '
        '"code": {"text": "Gr\\u00f6\\u00dfe \\u6771\\u4eac\\ud83d\\ude00"}, '
        '"effectiveDateTime": "2024-03-01", "issued": "2024-03-01T10:00:00-05:00", '
        '"valueQuantity": {"value": 2.0, "unit": "cm"}, "extension": ['
        '{"url": "http://x/decimal", "valueDecimal": 0.978}, '
        '{"url": "http://x/exponent", "valueDecimal": 1000000000000000.0}, '
        '{"url": "http://x/text-decimal", "valueDecimal": 1.5}, '
        '{"url": "http://x/partial", "valueDateTime": "2024-03"}, '
        '{"url": "http://x/time", "valueTime": "10:00:00.100000"}, '
        '{"url": "http://x/binary", "valueBase64Binary": "UVVKRA=="}, '
        '{"url": "http://x/boolean", "valueBoolean": true}, '
        '{"url": "http://x/integer", "valueInteger": 7}, '
        '{"url": "http://x/uuid", "valueUuid": "c757873d-ec9a-4326-a141-556f43239520"}]}}]}'
    )
    assert stored == expected
    record = (await client.get("/_sandbox/records")).json()["records"][0]
    assert record["bytes"] == len(json.dumps((await client.get("/data", params=_location(response))).json()))


def _location(response: httpx.Response) -> dict[str, str]:
    topic, partition, offset = response.json()["data_record_location"].split(":")
    return {"dataformat": topic, "partition": partition, "offset": offset}


async def test_without_validation_data_is_only_json_dumps(make_app: Callable[..., ConnectSandboxApp]) -> None:
    sent = a_typed_bundle()
    async with serve(make_app(validate=False)) as client:
        response = await client.post("/fhir/Bundle", json=sent)
    assert base64.b64decode(response.json()["data"]) == json.dumps(sent).encode()


async def test_a_stored_post_can_be_answered_without_its_location(client: httpx.AsyncClient) -> None:
    await client.put("/_sandbox/faults", json={"null_location_next": 1})

    raced = await client.post("/fhir/Bundle", json=a_bundle())
    located = await client.post("/fhir/Bundle", json=a_bundle())

    assert raced.status_code == 200
    envelope = raced.json()
    assert (envelope["status"], envelope["data_record_location"]) == (None, None)
    records = (await client.get("/_sandbox/records")).json()["records"]
    assert [r["uuid"] for r in records] == [envelope["uuid"], located.json()["uuid"]]
    assert located.json()["data_record_location"] == "FHIR-R4:0:1"
    assert (await client.get("/_sandbox/faults")).json()["null_location_next"] == 0


@pytest.mark.parametrize(
    ("share", "located"), [pytest.param(1.0, 0, id="all"), pytest.param(0.0, 5, id="none")]
)
async def test_null_location_share_from_the_config(
    make_app: Callable[..., ConnectSandboxApp], share: float, located: int
) -> None:
    async with serve(make_app(null_location_share=share)) as client:
        answers = [(await client.post("/fhir/Bundle", json=a_bundle())).json() for _ in range(5)]
        assert await record_count(client) == 5
    assert sum(a["data_record_location"] is not None for a in answers) == located
    assert sum(a["status"] == "success" for a in answers) == located


def test_null_location_share_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["--null-location-share", "0.05"]).null_location_share == 0.05
    monkeypatch.setenv("BLUEBUTTON_SANDBOX_CONNECT_NULL_LOCATION_SHARE", "0.25")
    assert parse_args([]).null_location_share == 0.25
    with pytest.raises(SystemExit):
        parse_args(["--null-location-share", "1.5"])
    with pytest.raises(ValueError, match="null_location_share"):
        ConnectSandboxConfig(null_location_share=-0.1)


async def test_entries_counts_what_was_stored_twice(client: httpx.AsyncClient) -> None:
    second = a_bundle()
    second["entry"].append({"resource": {"resourceType": "Patient", "id": "p2"}})
    for body in (a_bundle(), second):
        assert (await client.post("/fhir/Bundle", json=body)).status_code == 200
    await client.post("/fhir/Bundle", json={"resourceType": "Bundle", "type": "collection", "entry": [{}]})

    entries = (await client.get("/_sandbox/entries")).json()
    assert entries == {
        "stored": 3,
        "distinct": 2,
        "duplicates": {"Patient/p1": 2},
        "counts": {"Patient/p1": 2, "Patient/p2": 1},
    }
    await client.delete("/_sandbox/records")
    assert (await client.get("/_sandbox/entries")).json()["stored"] == 0
