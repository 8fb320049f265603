"""`GET /bluebutton/fhir` through the real app: auth, paging, merging, validation, splitting,
forwarding, answers and the error table; `/health` and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]  # no stubs installed (types-jsonschema)
import orjson
import pytest
import respx
from fhir.resources.R4B.bundle import Bundle

import bluebutton.pull.pipeline
from bluebutton.fhir import validation_patches
from bluebutton.fhir.validator import Validator
from bluebutton.settings import Settings
from tests.factories import (
    AUTH,
    PATIENT_ID,
    SMALL_LIMIT,
    TOKEN,
    cms_page,
    cms_pages,
    entry_for,
    envelope_for,
    eob_id,
    eob_with_entry_size,
    fhir_response,
    make_eob,
    make_patient,
    make_settings,
    page_url,
    record_location,
    record_uuid,
)
from tests.fakes import Connect, SleepRecorder, serve_pages
from tests.running import open_client
from tests.wire import diagnostics, outcome_issues

EOB = "ExplanationOfBenefit"

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")

# connect's rate-limit window is one second; the default wait matches it.
RATE_LIMIT_WAIT_SECONDS = Settings.model_fields["lfh_rate_limit_wait_seconds"].default
RATE_LIMIT_JITTER_SECONDS = Settings.model_fields["lfh_rate_limit_jitter_seconds"].default


async def get_fhir(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, **params: Any
) -> httpx.Response:
    params.setdefault("resource_type", EOB)
    return await client.get("/bluebutton/fhir", params=params, headers=AUTH if headers is None else headers)


def one_page(
    cms_mock: respx.MockRouter, resources: list[dict[str, Any]], resource_type: str = EOB
) -> respx.Route:
    return cms_mock.get(resource_type).mock(
        return_value=fhir_response(cms_page(resources, total=len(resources)))
    )


def ids_in(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def assert_nothing_forwarded(connect: Connect) -> None:
    assert not connect.route.calls


# --------------------------------------------------------------------------------------------- auth


async def test_missing_token_is_401_without_upstream_call(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    response = await get_fhir(client, headers={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert outcome_issues(response)[0]["code"] == "login"
    assert "Bearer" in diagnostics(response)
    assert not cms_mock.calls
    assert_nothing_forwarded(connect)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
        pytest.param("Token abcdef", id="token-scheme"),
        pytest.param(TOKEN, id="no-scheme"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Bearer ", id="bearer-blank"),
        pytest.param("Bearer abc def", id="token-with-space"),
        pytest.param('Bearer abc"def', id="token-with-quote"),
        pytest.param("Bearer abc,def", id="token-with-comma"),
        pytest.param("Bearer =abc", id="token-starting-with-equals"),
        pytest.param("Bearer " + "a" * 5000, id="token-too-long"),
    ],
)
async def test_malformed_authorization_is_401_without_upstream_call(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, authorization: str
) -> None:
    response = await get_fhir(client, headers={"Authorization": authorization})
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    outcome_issues(response)
    assert not cms_mock.calls
    assert_nothing_forwarded(connect)


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        pytest.param(f"Bearer {TOKEN}", TOKEN, id="plain"),
        pytest.param("Bearer a-b.c_d~e+f/g==", "a-b.c_d~e+f/g==", id="all-b64token-chars"),
        pytest.param(f"bearer {TOKEN}", TOKEN, id="lower-case-scheme"),
    ],
)
async def test_token_reaches_cms_unchanged_and_never_connect(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, authorization: str, token: str
) -> None:
    route = one_page(cms_mock, [make_eob(1)])
    response = await get_fhir(client, headers={"Authorization": authorization})
    assert response.status_code == 200, response.text
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {token}"
    assert len(connect.route.calls) == 1
    sent = connect.route.calls.last.request
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert token not in str(sent.headers)
    assert token.encode() not in sent.content
    assert token not in response.text


# ----------------------------------------------------------------------------------- health, openapi


def expected_validation_mode(fast_validation: bool = True) -> str:
    return "fast" if fast_validation and validation_patches.matches_checked_versions() else "standard"


async def test_health(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect_mock: respx.MockRouter
) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "validation": expected_validation_mode()}
    assert response.headers["X-Request-ID"]
    assert not cms_mock.calls
    assert not connect_mock.calls


async def test_health_says_when_validation_runs_without_the_patches(connect_mock: respx.MockRouter) -> None:
    async with open_client(make_settings(fast_validation=False, validation_workers=1)) as client:
        response = await client.get("/health")
    assert response.json() == {"status": "ok", "validation": "standard"}


async def test_the_transfer_log_line_says_how_entries_were_validated(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cms_mock.get("Patient").mock(return_value=fhir_response(cms_page([make_patient()])))
    with caplog.at_level(logging.INFO, logger="bluebutton.pull.pipeline"):
        response = await client.get("/bluebutton/fhir", params={"resource_type": "Patient"}, headers=AUTH)
    assert response.status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("transferred")]
    assert line.endswith(f"; validation {expected_validation_mode()}")


async def test_openapi_declares_bearer_auth_on_the_endpoint(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    bearer = {name for name, s in schemes.items() if s.get("type") == "http" and s.get("scheme") == "bearer"}
    assert bearer
    operation = document["paths"]["/bluebutton/fhir"]["get"]
    assert any(set(requirement) & bearer for requirement in operation["security"])


async def test_openapi_documents_the_error_shape(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    responses = document["paths"]["/bluebutton/fhir"]["get"]["responses"]
    for status in ("401", "403", "404", "422", "429", "500", "502", "504"):
        schemas = [c["schema"] for c in responses[status]["content"].values()]
        assert {"$ref": "#/components/schemas/OperationOutcome"} in schemas, status
    assert "issue" in document["components"]["schemas"]["OperationOutcome"]["properties"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_references_resolve(client: httpx.AsyncClient) -> None:
    """The 200 answer's documented shapes (envelope, aggregate) must exist in the document."""
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    missing = sorted({r for r in _refs(document) if r.removeprefix("#/components/schemas/") not in schemas})
    assert missing == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [pytest.param("GET", "/nowhere", 404, id="404"), pytest.param("POST", "/bluebutton/fhir", 405, id="405")],
)
async def test_framework_errors_are_operation_outcomes(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, headers=AUTH)
    assert response.status_code == status
    outcome_issues(response)
    assert response.headers["X-Request-ID"]


# --------------------------------------------------------------------------------- paging, merging


async def test_52_claims_over_two_pages_become_one_bundle(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = [make_eob(n) for n in range(52)]
    pages = cms_pages(EOB, claims)
    route = serve_pages(cms_mock, EOB, pages)
    before = datetime.now(UTC) - timedelta(seconds=5)

    response = await get_fhir(client, patient=PATIENT_ID, return_cms="true")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    # what CMS saw
    assert route.call_count == 2
    first = route.calls[0].request.url.params
    assert first["_count"] == "50"
    assert first["patient"] == PATIENT_ID
    assert {c.request.url.params.get("startIndex") for c in route.calls} == {None, "50"}
    # the merged Bundle
    merged = response.json()
    assert merged["resourceType"] == "Bundle"
    assert merged["type"] == "searchset"
    assert merged["total"] == 52
    assert merged["entry"] == [entry for page in pages for entry in page["entry"]]
    assert merged["id"] not in {page["id"] for page in pages}
    updated = datetime.fromisoformat(merged["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert before <= updated <= datetime.now(UTC) + timedelta(seconds=5)
    Bundle.model_validate(merged)
    # what connect got: the same entries, one Bundle
    assert len(connect.stored_bundles) == 1
    assert connect.stored_bundles[0]["entry"] == merged["entry"]
    assert connect.stored_bundles[0]["total"] == 52
    assert response.headers["X-LFH-Record-UUIDs"] == record_uuid(1)
    assert response.headers["X-LFH-Data-Record-Locations"] == record_location(1)


async def test_each_pull_gets_a_fresh_bundle_id(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1), make_eob(2)])
    first = (await get_fhir(client, return_cms="true")).json()
    second = (await get_fhir(client, return_cms="true")).json()
    assert first["id"] != second["id"]
    assert first["entry"] == second["entry"]
    assert [b["id"] for b in connect.stored_bundles] == [first["id"], second["id"]]


async def test_empty_search_is_an_empty_bundle_and_not_forwarded(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [])
    response = await get_fhir(client, return_cms="true")
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 0
    assert response.json().get("entry", []) == []
    assert response.headers["X-LFH-Bundle-Count"] == "0"
    assert "empty search result" in response.headers["X-LFH-Skipped"]
    assert_nothing_forwarded(connect)


async def test_empty_search_answers_bundle_count_0(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [])
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    assert response.json() == {"bundle_count": 0, "entry_count": 0, "bundles": []}
    assert response.headers["X-LFH-Bundle-Count"] == "0"
    assert response.headers["X-LFH-Record-UUIDs"] == ""
    assert response.headers["X-LFH-Data-Record-Locations"] == ""
    assert response.headers["X-LFH-Skipped"] == "empty search result; nothing was sent to connect"
    assert_nothing_forwarded(connect)


async def test_a_non_empty_search_says_nothing_was_skipped(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1)])
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    assert "X-LFH-Skipped" not in response.headers
    assert len(connect.stored) == 1


@pytest.mark.parametrize(
    "link",
    [
        pytest.param(
            "https://evil.test/v2/fhir/ExplanationOfBenefit?startIndex=50&_count=50", id="other-host"
        ),
        pytest.param("https://cms.test:8443/v2/fhir/ExplanationOfBenefit?startIndex=50", id="other-port"),
        pytest.param("http://cms.test/v2/fhir/ExplanationOfBenefit?startIndex=50", id="other-scheme"),
        pytest.param("https://cms.test/v2/o/token/?startIndex=50", id="path-outside-fhir"),
        pytest.param("https://cms.test/v2/fhir/../o/token/?startIndex=50", id="dot-segments"),
        pytest.param("https://cms.test/v2/fhir/%2e%2e/o/token/?startIndex=50", id="encoded-dot-segments"),
    ],
)
@pytest.mark.parametrize(
    "with_total", [pytest.param(True, id="with-total"), pytest.param(False, id="no-total")]
)
async def test_hostile_next_link_is_502_and_never_called(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect: Connect,
    elsewhere: respx.Route,
    link: str,
    with_total: bool,
) -> None:
    page = cms_page([make_eob(n) for n in range(50)], total=52 if with_total else None, next_url=link)
    route = cms_mock.get(EOB).mock(return_value=fhir_response(page))
    response = await get_fhir(client)
    assert response.status_code == 502, response.text
    assert "Blue Button" in diagnostics(response)
    assert route.call_count == 1
    assert not elsewhere.called
    assert_nothing_forwarded(connect)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b'"\xff"', id="invalid-utf8"),
        pytest.param(b"1e999", id="infinite-number"),
    ],
)
async def test_entry_that_is_not_json_after_all_is_502(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, bad: bytes
) -> None:
    """The fetch only checks a page's syntax; what only a full parse refuses is caught before
    anything is forwarded, with the same answer as any other non-JSON page."""
    body = orjson.dumps(cms_page([make_eob(n) for n in range(3)], total=3))
    body = body.replace(
        b'"resourceType":"ExplanationOfBenefit"', b'"x":%s,"resourceType":"ExplanationOfBenefit"' % bad, 1
    )
    cms_mock.get(EOB).mock(return_value=httpx.Response(200, content=body))
    response = await get_fhir(client)
    assert response.status_code == 502, response.text
    assert "not JSON" in diagnostics(response)
    assert_nothing_forwarded(connect)


async def test_repeating_link_is_502(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    page1 = cms_page([make_eob(1)], self_url=page_url(EOB, 0, 1), next_url=page_url(EOB, 1, 1))
    page2 = cms_page([make_eob(2)], self_url=page_url(EOB, 1, 1), next_url=page_url(EOB, 1, 1))
    serve_pages(cms_mock, EOB, [page1, page2])
    response = await get_fhir(client)
    assert response.status_code == 502
    assert "repeat" in diagnostics(response)
    assert_nothing_forwarded(connect)


async def test_page_bound(
    cms_mock: respx.MockRouter, connect: Connect, settings_factory: Callable[..., Settings]
) -> None:
    claims = [make_eob(n) for n in range(12)]
    route = serve_pages(cms_mock, EOB, cms_pages(EOB, claims, per_page=4, with_total=False))
    async with open_client(settings_factory(cms_max_pages=2)) as client:
        response = await get_fhir(client)
    assert response.status_code == 502
    assert "BLUEBUTTON_CMS_MAX_PAGES" in diagnostics(response)
    assert route.call_count == 2
    assert_nothing_forwarded(connect)


# -------------------------------------------------------------------------------- validation report


async def test_invalid_claim_is_422_naming_entry_resource_and_path(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = [make_eob(n) for n in range(6)]
    del claims[3]["provider"]
    one_page(cms_mock, claims)
    response = await get_fhir(client)
    assert response.status_code == 422, response.text
    issues = outcome_issues(response)
    located = [i for i in issues if i.get("expression")]
    assert [i["expression"] for i in located] == [["Bundle.entry[3].resource.provider"]]
    assert "entry 3" in located[0]["diagnostics"]
    assert f"ExplanationOfBenefit/{eob_id(3)}" in located[0]["diagnostics"]
    assert_nothing_forwarded(connect)


async def test_an_r4b_only_entry_is_422_naming_it_and_nothing_forwarded(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    status = {
        "resourceType": "SubscriptionStatus",
        "id": "status-1",
        "type": "heartbeat",
        "subscription": {"reference": "Subscription/1"},
    }
    one_page(cms_mock, [make_eob(0), status, make_eob(2)])

    response = await get_fhir(client)

    assert response.status_code == 422, response.text
    issues = outcome_issues(response)
    named = [i for i in issues if i.get("expression") == ["Bundle.entry[1].resource.resourceType"]]
    assert len(named) == 1
    assert "entry 1 (SubscriptionStatus/status-1)" in named[0]["diagnostics"]
    assert "not in FHIR R4" in named[0]["diagnostics"]
    assert_nothing_forwarded(connect)


async def test_one_issue_per_problem_across_pages(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = [make_eob(n) for n in range(60)]
    del claims[0]["insurer"]
    claims[51]["item"] = [{"sequence": 1}]
    claims[59]["bogusElement"] = "x"
    serve_pages(cms_mock, EOB, cms_pages(EOB, claims))
    response = await get_fhir(client)
    assert response.status_code == 422
    located = {tuple(i["expression"]) for i in outcome_issues(response) if i.get("expression")}
    assert located == {
        ("Bundle.entry[0].resource.insurer",),
        ("Bundle.entry[51].resource.item[0].productOrService",),
        ("Bundle.entry[59].resource.bogusElement",),
    }
    assert_nothing_forwarded(connect)


# -------------------------------------------------------------------------------------- splitting


def sized_claims(count: int, size: int) -> list[dict[str, Any]]:
    return [eob_with_entry_size(n, size) for n in range(count)]


async def test_split_into_connect_sized_bundles(
    small_client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = sized_claims(10, 4000)
    page = cms_page(claims, total=10)
    one_page_route = cms_mock.get(EOB).mock(return_value=fhir_response(page))

    response = await get_fhir(small_client)

    assert response.status_code == 200, response.text
    assert one_page_route.call_count == 1
    posted = connect.route.calls
    assert len(posted) == 5
    for call in posted:
        assert len(call.request.content) <= SMALL_LIMIT
        bundle = orjson.loads(call.request.content)
        assert bundle["type"] == "searchset"
        Bundle.model_validate(bundle)
    assert [e for b in connect.stored_bundles for e in b["entry"]] == page["entry"]
    assert len({b["id"] for b in connect.stored_bundles}) == 5
    # the documented aggregate, in order
    assert response.headers["content-length"] == str(len(response.content))
    answer = response.json()
    assert answer["bundle_count"] == 5
    assert answer["entry_count"] == 10
    assert [(b["first_entry"], b["entry_count"]) for b in answer["bundles"]] == [
        (0, 2),
        (2, 2),
        (4, 2),
        (6, 2),
        (8, 2),
    ]
    assert [b["envelope"] for b in answer["bundles"]] == [orjson.loads(e) for e in connect.envelopes]
    assert response.headers["X-LFH-Bundle-Count"] == "5"
    assert response.headers["X-LFH-Record-UUIDs"] == ",".join(record_uuid(n) for n in range(1, 6))
    assert response.headers["X-LFH-Data-Record-Locations"] == ",".join(
        record_location(n) for n in range(1, 6)
    )


async def test_a_multi_bundle_answer_matches_its_documented_schema(
    small_client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    """The answer for several Bundles is what OpenAPI documents as `ForwardedBundles`, and only
    that branch of the endpoint's `oneOf` (it is no connect envelope)."""
    cms_mock.get(EOB).mock(return_value=fhir_response(cms_page(sized_claims(6, 4000), total=6)))
    response = await get_fhir(small_client)
    assert response.status_code == 200, response.text
    document = (await small_client.get("/openapi.json")).json()
    declared = document["paths"]["/bluebutton/fhir"]["get"]["responses"]["200"]["content"]
    declared_schema = declared["application/json"]["schema"]

    def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator({**schema, "components": document["components"]})

    answer = response.json()
    assert answer["bundle_count"] > 1
    validator({"$ref": "#/components/schemas/ForwardedBundles"}).validate(answer)
    validator(declared_schema).validate(answer)
    assert not validator({"$ref": "#/components/schemas/LfhEnvelope"}).is_valid(answer)
    broken = {**answer, "bundles": [{**answer["bundles"][0], "envelope": {"status": "success"}}]}
    assert not validator({"$ref": "#/components/schemas/ForwardedBundles"}).is_valid(broken)


async def test_split_with_return_cms_answers_the_whole_bundle(
    small_client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = sized_claims(7, 4000)
    one_page(cms_mock, claims)
    response = await get_fhir(small_client, return_cms="true")
    assert response.status_code == 200, response.text
    assert response.headers["content-length"] == str(len(response.content))
    merged = response.json()
    assert ids_in(merged) == [c["id"] for c in claims]
    assert merged["total"] == 7
    assert len(connect.stored) == 4
    assert response.headers["X-LFH-Record-UUIDs"].split(",") == [record_uuid(n) for n in range(1, 5)]
    assert response.headers["X-LFH-Data-Record-Locations"].split(",") == [
        record_location(n) for n in range(1, 5)
    ]


async def test_oversized_single_entry_is_422_and_nothing_forwarded(
    small_client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = sized_claims(3, 3000)
    claims[1] = eob_with_entry_size(1, 12_000)
    one_page(cms_mock, claims)
    response = await get_fhir(small_client)
    assert response.status_code == 422
    text = diagnostics(response)
    assert "entry 1" in text
    assert "BLUEBUTTON_LFH_MAX_BUNDLE_BYTES" in text
    assert_nothing_forwarded(connect)


async def test_a_patient_of_accents_under_the_limit_as_sent_is_422_as_connect_would_store_it(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    # 500 KB of UTF-8, under the default 600,000 bytes; connect's ASCII escapes make it 1.5 MB.
    patient = make_patient("-19990000000043", family="é" * 250_000)
    cms_mock.get("Patient").mock(return_value=fhir_response(cms_page([patient])))

    response = await client.get("/bluebutton/fhir", params={"resource_type": "Patient"}, headers=AUTH)

    assert response.status_code == 422, response.text
    issues = outcome_issues(response)
    assert issues[0]["code"] == "too-costly"
    text = diagnostics(response)
    assert "entry 0 (Patient/-19990000000043)" in text
    assert "é" not in text
    assert_nothing_forwarded(connect)


async def test_failure_on_the_third_of_five_posts_is_reported(
    small_client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, sized_claims(10, 4000))
    refusal = httpx.Response(500, json={"detail": "Object of type Bundle is not JSON serializable"})
    connect.script = [None, None, refusal]

    response = await get_fhir(small_client)

    assert response.status_code == 502
    assert len(connect.route.calls) == 3  # nothing after the failure
    issues = outcome_issues(response)
    text = diagnostics(response)
    for n in (1, 2):
        assert record_uuid(n) in text
        assert record_location(n) in text
    assert record_uuid(3) not in text
    not_stored = [i for i in issues if i["severity"] == "error" and "4-9" in i["diagnostics"]]
    assert not_stored, issues
    assert "LinuxForHealth connect" in text
    assert "Object of type Bundle is not JSON serializable" in text
    assert response.headers["X-LFH-Record-UUIDs"] == f"{record_uuid(1)},{record_uuid(2)}"
    assert response.headers["X-LFH-Data-Record-Locations"] == f"{record_location(1)},{record_location(2)}"


# ---------------------------------------------------------------------------------------- connect


async def test_connect_429_is_waited_out_and_resent(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, connect_sleeps: SleepRecorder
) -> None:
    one_page(cms_mock, [make_eob(1), make_eob(2)])
    connect.script = [httpx.Response(429, json={"error": "Rate limit exceeded: 10 per 1 second"})]
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    calls = connect.route.calls
    assert len(calls) == 2
    assert calls[0].request.content == calls[1].request.content
    [delay] = connect_sleeps.delays
    assert RATE_LIMIT_WAIT_SECONDS <= delay < RATE_LIMIT_WAIT_SECONDS + RATE_LIMIT_JITTER_SECONDS
    assert response.content == connect.envelopes[0]


async def test_connect_unreachable_is_retried_then_502(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1)])
    connect.script = [httpx.ConnectError("connection refused")] * 10
    response = await get_fhir(client)
    assert response.status_code == 502
    assert len(connect.route.calls) >= 2
    assert not connect.stored
    assert "LinuxForHealth connect" in diagnostics(response)


async def test_connect_unreachable_once_then_stored(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1)])
    connect.script = [httpx.ConnectError("connection refused")]
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    assert len(connect.stored) == 1


async def test_connect_500_detail_is_passed_on(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1)])
    connect.script = [httpx.Response(500, json={"detail": "KafkaException: broker transport failure"})]
    response = await get_fhir(client)
    assert response.status_code == 502
    text = diagnostics(response)
    assert "LinuxForHealth connect" in text
    assert "500" in text
    assert "KafkaException: broker transport failure" in text
    assert len(connect.route.calls) == 1  # a POST that reached connect is never resent


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"status": "ok"}', id="json-not-envelope"),
        pytest.param(b"<html>OK</html>", id="html"),
        pytest.param(orjson.dumps({"uuid": "x"}), id="no-location"),
    ],
)
async def test_connect_200_without_envelope_is_502(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, content: bytes
) -> None:
    one_page(cms_mock, [make_eob(1)])
    connect.script = [httpx.Response(200, content=content)]
    response = await get_fhir(client)
    assert response.status_code == 502
    assert "LinuxForHealth connect" in diagnostics(response)


# ---------------------------------------------------------------------------------------- answers


async def test_one_bundle_answers_connects_envelope_unchanged(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_patient()], "Patient")
    envelope = (
        b'{ "uuid" : "u-42",  "data_record_location":"FHIR-R4:3:99", "status": "success", "x": [1, 2.50] }'
    )
    connect.script = [httpx.Response(200, content=envelope, headers={"Content-Type": "application/json"})]
    response = await get_fhir(client, resource_type="Patient", return_cms="false")
    assert response.status_code == 200
    assert response.content == envelope
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["X-LFH-Record-UUIDs"] == "u-42"
    assert response.headers["X-LFH-Data-Record-Locations"] == "FHIR-R4:3:99"


async def test_return_cms_default_is_false(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1)])
    response = await get_fhir(client)
    assert response.status_code == 200
    assert response.json() == envelope_for(1, connect.stored[0])


async def test_return_cms_true_answers_the_merged_bundle(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    claims = [make_eob(n) for n in range(3)]
    one_page(cms_mock, claims)
    response = await get_fhir(client, return_cms="true")
    assert response.status_code == 200
    merged = response.json()
    assert merged["entry"] == [entry_for(c) for c in claims]
    assert merged == connect.stored_bundles[0]
    assert response.headers["X-LFH-Record-UUIDs"] == record_uuid(1)
    assert response.headers["X-LFH-Data-Record-Locations"] == record_location(1)


# ------------------------------------------------------------------------------- CMS error table


CMS_ERRORS = [
    pytest.param(
        fhir_response({"detail": "Authentication credentials were not provided."}, 401),
        401,
        1,
        ["Authentication credentials were not provided.", "refresh", "authoriz"],
        id="401",
    ),
    pytest.param(
        fhir_response({"detail": "User access has timed out."}, 401),
        401,
        1,
        ["User access has timed out.", "re-authoriz"],
        id="401-grant-expired",
    ),
    pytest.param(
        fhir_response({"detail": "You do not have permission to perform this action."}, 403),
        403,
        1,
        ["You do not have permission to perform this action.", "scope"],
        id="403",
    ),
    pytest.param(fhir_response({"detail": "Not found."}, 404), 404, 1, ["Not found."], id="404"),
    pytest.param(
        fhir_response({"detail": "the type parameter value is not valid"}, 400),
        400,
        1,
        ["the type parameter value is not valid"],
        id="400",
    ),
    pytest.param(
        fhir_response({"detail": "A failure occurred contacting the upstream server"}, 500),
        502,
        4,
        ["Blue Button", "500"],
        id="500",
    ),
    pytest.param(fhir_response({"detail": "upstream"}, 502), 502, 4, ["Blue Button", "502"], id="502"),
    pytest.param(httpx.Response(503, text="Service Unavailable"), 502, 4, ["Blue Button", "503"], id="503"),
    pytest.param(httpx.Response(504, text="Gateway Timeout"), 502, 4, ["Blue Button", "504"], id="504"),
    pytest.param(httpx.ConnectError("connection refused"), 502, 4, ["Blue Button"], id="connection-failure"),
    pytest.param(httpx.ReadTimeout("timed out"), 504, 4, ["Blue Button"], id="timeout"),
    pytest.param(
        httpx.Response(200, content=b'{"resourceType": "Bundle", "entry": ['),
        502,
        None,
        ["Blue Button", "JSON"],
        id="malformed-json",
    ),
    pytest.param(
        fhir_response({"resourceType": "OperationOutcome", "issue": []}),
        502,
        None,
        ["Blue Button", "Bundle"],
        id="non-bundle",
    ),
]


@pytest.mark.parametrize(("answer", "status", "calls", "texts"), CMS_ERRORS)
async def test_cms_error_table(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect: Connect,
    answer: Any,
    status: int,
    calls: int | None,
    texts: list[str],
) -> None:
    if isinstance(answer, Exception):
        route = cms_mock.get(EOB).mock(side_effect=answer)
    else:
        route = cms_mock.get(EOB).mock(return_value=answer)
    response = await get_fhir(client)
    assert response.status_code == status, response.text
    text = diagnostics(response)
    for expected in texts:
        assert expected.lower() in text.lower(), text
    if calls is not None:
        assert route.call_count == calls
    assert TOKEN not in response.text
    assert_nothing_forwarded(connect)


async def test_cms_429_after_retries_is_429_with_retry_after(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, cms_sleeps: SleepRecorder
) -> None:
    throttled = httpx.Response(429, json={"detail": "Request was throttled."}, headers={"Retry-After": "5"})
    route = cms_mock.get(EOB).mock(return_value=throttled)
    response = await get_fhir(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert "Request was throttled." in diagnostics(response)
    assert route.call_count == 4
    assert cms_sleeps.delays == [5.0, 5.0, 5.0]
    assert_nothing_forwarded(connect)


async def test_cms_transient_failures_then_success(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, cms_sleeps: SleepRecorder
) -> None:
    page = fhir_response(cms_page([make_eob(1)], total=1))
    route = cms_mock.get(EOB).mock(
        side_effect=[
            httpx.Response(503),
            httpx.ConnectError("reset"),
            httpx.Response(429, headers={"Retry-After": "3"}),
            page,
        ]
    )
    response = await get_fhir(client)
    assert response.status_code == 200, response.text
    assert route.call_count == 4
    assert 3.0 in cms_sleeps.delays
    assert len(connect.stored) == 1


async def test_unexpected_error_is_500_with_request_id_only(
    cms_mock: respx.MockRouter, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal-failure-marker in split_entries")

    monkeypatch.setattr(bluebutton.pull.pipeline, "split_entries", explode)
    one_page(cms_mock, [make_eob(1)])
    async with open_client(make_settings(), raise_app_exceptions=False) as client:
        response = await get_fhir(client)
    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert request_id
    text = diagnostics(response)
    assert request_id in text
    for leak in ("Traceback", "internal-failure-marker", "split_entries", "RuntimeError", TOKEN, ".py"):
        assert leak not in response.text
    assert_nothing_forwarded(connect)


# ----------------------------------------------------------------------------- non-blocking validation


async def test_health_answers_while_a_big_pull_is_being_validated(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = [make_eob(n, items=4) for n in range(500)]
    serve_pages(cms_mock, EOB, cms_pages(EOB, claims))
    submitted: list[asyncio.Future[Any]] = []
    validating = asyncio.Event()
    original = Validator.submit

    def submit(self: Validator, entry_bytes: Any, first_index: int) -> asyncio.Future[Any]:
        future = original(self, entry_bytes, first_index)
        submitted.append(future)
        validating.set()
        return future

    monkeypatch.setattr(Validator, "submit", submit)
    pull = asyncio.create_task(get_fhir(client))
    await asyncio.wait_for(validating.wait(), timeout=60)

    health = await client.get("/health")

    assert health.status_code == 200
    assert not pull.done(), "the pull finished before /health answered"
    assert not all(f.done() for f in submitted), "validation was already over when /health answered"
    response = await pull
    assert response.status_code == 200, response.text
    stored = [e["resource"]["id"] for bundle in connect.stored_bundles for e in bundle["entry"]]
    assert stored == [c["id"] for c in claims]


async def test_every_response_has_a_request_id(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect
) -> None:
    one_page(cms_mock, [make_eob(1)])
    responses = [
        await get_fhir(client),
        await get_fhir(client, headers={}),
        await get_fhir(client, resource_type="Claim"),
        await client.get("/health"),
    ]
    request_ids = [r.headers.get("X-Request-ID") for r in responses]
    assert all(request_ids)
    assert len(set(request_ids)) == len(request_ids)
