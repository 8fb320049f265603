"""The `GET /bluebutton/fhir` query: its rules (422 before any upstream call) and its CMS form."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from bluebutton.pull.query import EOB_TYPES, FhirQuery, repeated_single_values
from tests.factories import (
    AUTH,
    PATIENT_ID,
    TOKEN,
    cms_page,
    fhir_response,
    make_coverage,
    make_eob,
    make_patient,
)
from tests.fakes import Connect
from tests.wire import outcome_issues

# ------------------------------------------------------------------------------ the model itself


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({"resource_type": "Patient"}, [("_count", "50")], id="patient-no-id"),
        pytest.param(
            {"resource_type": "Patient", "patient": PATIENT_ID},
            [("_count", "50"), ("_id", PATIENT_ID)],
            id="patient-_id",
        ),
        pytest.param(
            {"resource_type": "Coverage", "patient": PATIENT_ID},
            [("_count", "50"), ("beneficiary", PATIENT_ID)],
            id="coverage-beneficiary",
        ),
        pytest.param(
            {"resource_type": "ExplanationOfBenefit", "patient": PATIENT_ID},
            [("_count", "50"), ("patient", PATIENT_ID)],
            id="eob-patient",
        ),
        pytest.param(
            {
                "resource_type": "ExplanationOfBenefit",
                "type": "carrier,pde",
                "service_date": ["ge2023-01-01", "lt2024-01-01"],
                "last_updated": ["gt2024-01-01", "le2024-06-30"],
            },
            [
                ("_count", "50"),
                ("type", "carrier,pde"),
                ("service-date", "ge2023-01-01"),
                ("service-date", "lt2024-01-01"),
                ("_lastUpdated", "gt2024-01-01"),
                ("_lastUpdated", "le2024-06-30"),
            ],
            id="eob-filters",
        ),
        pytest.param(
            {"resource_type": "Coverage", "last_updated": ["ge2024-01-01"]},
            [("_count", "50"), ("_lastUpdated", "ge2024-01-01")],
            id="coverage-lastUpdated",
        ),
    ],
)
def test_cms_params(query: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert sorted(FhirQuery.model_validate(query).cms_params()) == sorted(expected)


def test_defaults() -> None:
    query = FhirQuery.model_validate({"resource_type": "ExplanationOfBenefit"})
    assert query.patient is None
    assert query.return_cms is False
    assert query.type is None
    assert query.service_date == []
    assert query.last_updated == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ge2023", id="year"),
        pytest.param("lt2023-06", id="month"),
        pytest.param("le2024-02-29", id="leap-day"),
        pytest.param("gt2023-01-01T00:00:00Z", id="datetime-Z"),
        pytest.param("ge2023-06-30T12:30:00.123+02:00", id="datetime-offset"),
        pytest.param("lt2023-06-30T12:30-05:00", id="datetime-minutes"),
    ],
)
def test_good_dates(value: str) -> None:
    query = FhirQuery.model_validate(
        {"resource_type": "ExplanationOfBenefit", "service_date": [value], "last_updated": [value]}
    )
    assert ("service-date", value) in query.cms_params()
    assert ("_lastUpdated", value) in query.cms_params()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"resource_type": "Claim"}, id="resource-type-Claim"),
        pytest.param({"resource_type": "patient"}, id="resource-type-lowercase"),
        pytest.param({"resource_type": "Patient", "patient": "Patient/-1"}, id="patient-slash"),
        pytest.param({"resource_type": "Patient", "patient": "-1&_count=500"}, id="patient-ampersand"),
        pytest.param({"resource_type": "Patient", "patient": "a" * 65}, id="patient-too-long"),
        pytest.param({"resource_type": "ExplanationOfBenefit", "type": "carrier,bogus"}, id="type-unknown"),
        pytest.param({"resource_type": "ExplanationOfBenefit", "type": ""}, id="type-empty"),
        pytest.param(
            {"resource_type": "ExplanationOfBenefit", "service_date": ["2023-01-01"]},
            id="service-date-no-prefix",
        ),
        pytest.param(
            {"resource_type": "ExplanationOfBenefit", "service_date": ["ge2023-02-30"]},
            id="service-date-impossible",
        ),
        pytest.param(
            {"resource_type": "ExplanationOfBenefit", "last_updated": ["eq2023-01-01"]}, id="last-updated-eq"
        ),
        pytest.param({"resource_type": "Patient", "type": "carrier"}, id="type-on-Patient"),
        pytest.param(
            {"resource_type": "Coverage", "service_date": ["ge2023-01-01"]}, id="service-date-on-Coverage"
        ),
    ],
)
def test_model_refuses(query: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FhirQuery.model_validate(query)


# --------------------------------------------------------------------------- through the endpoint


def _url(**params: Any) -> httpx.URL:
    return httpx.URL("/bluebutton/fhir", params=params)


BAD_QUERIES = [
    pytest.param({}, "resource_type", id="resource_type-missing"),
    pytest.param({"resource_type": "Claim"}, "resource_type", id="resource_type-Claim"),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit/../Patient"}, "resource_type", id="resource_type-path"
    ),
    pytest.param({"resource_type": "explanationofbenefit"}, "resource_type", id="resource_type-case"),
    pytest.param(
        {"resource_type": "Patient", "patient": "Patient/-20140000008325"},
        "patient",
        id="patient-reference-form",
    ),
    pytest.param(
        {"resource_type": "Patient", "patient": "-2014&_count=500"}, "patient", id="patient-ampersand"
    ),
    pytest.param({"resource_type": "Patient", "patient": "-2014 0000"}, "patient", id="patient-space"),
    pytest.param({"resource_type": "Patient", "patient": "../../o/token"}, "patient", id="patient-traversal"),
    pytest.param({"resource_type": "Patient", "patient": ""}, "patient", id="patient-empty"),
    pytest.param({"resource_type": "Patient", "patient": "x" * 65}, "patient", id="patient-65-chars"),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "type": "carrier,claim"}, "type", id="type-unknown"
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "type": "carrier;pde"}, "type", id="type-semicolon"
    ),
    pytest.param({"resource_type": "ExplanationOfBenefit", "type": ""}, "type", id="type-empty"),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "service_date": "2023-01-01"},
        "service_date",
        id="service_date-no-prefix",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "service_date": "eq2023-01-01"},
        "service_date",
        id="service_date-eq-prefix",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "service_date": "ge2023-02-30"},
        "service_date",
        id="service_date-feb-30",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "service_date": "ge2023-13"},
        "service_date",
        id="service_date-month-13",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "service_date": "ge2023-01-01T25:00:00Z"},
        "service_date",
        id="service_date-hour-25",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "service_date": ["ge2023-01-01", "yesterday"]},
        "service_date",
        id="service_date-second-bad",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "last_updated": "2024-01-01"},
        "last_updated",
        id="last_updated-no-prefix",
    ),
    pytest.param(
        {"resource_type": "ExplanationOfBenefit", "last_updated": "lt2023-04-31"},
        "last_updated",
        id="last_updated-april-31",
    ),
    pytest.param({"resource_type": "Patient", "type": "carrier"}, "type", id="type-on-Patient"),
    pytest.param({"resource_type": "Coverage", "type": "pde"}, "type", id="type-on-Coverage"),
    pytest.param(
        {"resource_type": "Patient", "service_date": "ge2023-01-01"},
        "service_date",
        id="service_date-on-Patient",
    ),
    pytest.param({"resource_type": "Patient", "return_cms": "maybe"}, "return_cms", id="return_cms-not-bool"),
]


@pytest.mark.parametrize(("params", "named"), BAD_QUERIES)
async def test_bad_query_is_422_before_any_upstream_call(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect_mock: respx.MockRouter,
    elsewhere: respx.Route,
    params: dict[str, Any],
    named: str,
) -> None:
    response = await client.get(_url(**params), headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    issues = outcome_issues(response)
    assert all(issue["severity"] == "error" for issue in issues)
    assert any(named in issue["diagnostics"] for issue in issues), issues
    assert not cms_mock.calls
    assert not connect_mock.calls
    assert not elsewhere.called


async def _one_page(cms_mock: respx.MockRouter, resource_type: str, resource: dict[str, Any]) -> respx.Route:
    return cms_mock.get(resource_type).mock(return_value=fhir_response(cms_page([resource], total=1)))


@pytest.mark.parametrize(
    ("params", "resource_type", "resource", "expected"),
    [
        pytest.param(
            {"resource_type": "Patient", "patient": PATIENT_ID},
            "Patient",
            make_patient(),
            [("_count", "50"), ("_id", PATIENT_ID)],
            id="Patient-_id",
        ),
        pytest.param(
            {"resource_type": "Coverage", "patient": PATIENT_ID},
            "Coverage",
            make_coverage(),
            [("_count", "50"), ("beneficiary", PATIENT_ID)],
            id="Coverage-beneficiary",
        ),
        pytest.param(
            {"resource_type": "ExplanationOfBenefit", "patient": PATIENT_ID},
            "ExplanationOfBenefit",
            make_eob(),
            [("_count", "50"), ("patient", PATIENT_ID)],
            id="EOB-patient",
        ),
        pytest.param(
            {"resource_type": "ExplanationOfBenefit"},
            "ExplanationOfBenefit",
            make_eob(),
            [("_count", "50")],
            id="EOB-no-patient",
        ),
        pytest.param(
            {"resource_type": "Patient"}, "Patient", make_patient(), [("_count", "50")], id="Patient-no-id"
        ),
        pytest.param(
            {
                "resource_type": "ExplanationOfBenefit",
                "type": "carrier,pde,outpatient",
                "service_date": ["ge2023-01-01", "lt2024-01-01"],
                "last_updated": ["gt2024-01-01", "le2024-06-30"],
            },
            "ExplanationOfBenefit",
            make_eob(),
            [
                ("_count", "50"),
                ("type", "carrier,pde,outpatient"),
                ("service-date", "ge2023-01-01"),
                ("service-date", "lt2024-01-01"),
                ("_lastUpdated", "gt2024-01-01"),
                ("_lastUpdated", "le2024-06-30"),
            ],
            id="EOB-filters-repeated",
        ),
        pytest.param(
            {"resource_type": "Patient", "last_updated": "gt2024-01-01"},
            "Patient",
            make_patient(),
            [("_count", "50"), ("_lastUpdated", "gt2024-01-01")],
            id="Patient-lastUpdated",
        ),
    ],
)
async def test_what_reaches_cms(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect: Connect,
    params: dict[str, Any],
    resource_type: str,
    resource: dict[str, Any],
    expected: list[tuple[str, str]],
) -> None:
    route = await _one_page(cms_mock, resource_type, resource)
    response = await client.get(_url(**params), headers=AUTH)
    assert response.status_code == 200, response.text
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.url.path == f"/v2/fhir/{resource_type}"
    assert sorted(request.url.params.multi_items()) == sorted(expected)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert len(connect.stored) == 1


# ------------------------------------------------------------------------------ bounded query

LONG_TYPE = ",".join(["carrier", "pde"] * 4700)  # valid codes, 56 KB: past httpx's URL limit


def _raw_url(**params: str | list[str]) -> str:
    """The query as a browser sends it: commas bare (httpx's `params=` would encode them)."""
    pairs = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
    return "/bluebutton/fhir?" + "&".join(f"{k}={v}" for k, v in pairs)


def test_long_valid_type_list_is_over_httpx_limits() -> None:
    """Guards the test below: this query reaches the service, but cannot be sent on to CMS."""
    assert len(_raw_url(type=LONG_TYPE)) > 56_000
    httpx.URL(_raw_url(type=LONG_TYPE))
    with pytest.raises(httpx.InvalidURL):
        httpx.URL("https://cms.test/v2/fhir/ExplanationOfBenefit", params={"type": LONG_TYPE})


@pytest.mark.parametrize(
    ("query", "named", "says"),
    [
        pytest.param({"type": "carrier,pde,carrier"}, "type", "more than once", id="type-repeat"),
        pytest.param({"type": "carrier, carrier"}, "type", "more than once", id="type-repeat-spaced"),
        pytest.param({"type": ",".join([*EOB_TYPES, "carrier"])}, "type", "at most 8", id="type-nine"),
        pytest.param({"type": LONG_TYPE}, "type", "at most 8", id="type-56KB"),
        pytest.param({"type": "x," * 10_000}, "type", "at most 8", id="type-many-unknown"),
        pytest.param(
            {"service_date": ["ge2023-01-01", "le2023-06-30", "lt2024-01-01"]},
            "service_date",
            "at most 2",
            id="service_date-three",
        ),
        pytest.param(
            {"last_updated": ["ge2023-01-01"] * 1000}, "last_updated", "at most 2", id="last_updated-1000"
        ),
    ],
)
async def test_unbounded_query_is_422_before_any_upstream_call(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect_mock: respx.MockRouter,
    elsewhere: respx.Route,
    query: dict[str, Any],
    named: str,
    says: str,
) -> None:
    response = await client.get(_raw_url(resource_type="ExplanationOfBenefit", **query), headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    issues = outcome_issues(response)
    assert [issue["expression"] for issue in issues] == [[named]]
    assert says in issues[0]["diagnostics"]
    assert len(response.content) < 2_000  # the message names the rule, it does not echo the input
    assert not cms_mock.calls
    assert not connect_mock.calls
    assert not elsewhere.called


def test_every_type_once_is_fine() -> None:
    query = FhirQuery.model_validate({"resource_type": "ExplanationOfBenefit", "type": ",".join(EOB_TYPES)})
    assert ("type", ",".join(EOB_TYPES)) in query.cms_params()


def test_a_range_of_two_bounds_is_fine() -> None:
    query = FhirQuery.model_validate(
        {
            "resource_type": "ExplanationOfBenefit",
            "service_date": ["ge2023-01-01", "lt2024-01-01"],
            "last_updated": ["gt2024-01-01", "le2024-06-30"],
        }
    )
    assert len(query.cms_params()) == 5


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        pytest.param("resource_type=Patient&resource_type=Coverage", ["resource_type"], id="resource_type"),
        pytest.param(
            "resource_type=ExplanationOfBenefit&type=carrier&type=pde", ["type"], id="type-as-repeats"
        ),
        pytest.param(
            "resource_type=Coverage&patient=-19990000000043&patient=-19990000000044&return_cms=true"
            "&return_cms=false",
            ["patient", "return_cms"],
            id="patient-and-return_cms",
        ),
    ],
)
async def test_a_single_valued_parameter_given_twice_is_422_not_the_last_one(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect_mock: respx.MockRouter,
    raw: str,
    named: list[str],
) -> None:
    """FastAPI keeps the last of repeated values: the search would not be the one asked for."""
    response = await client.get(f"/bluebutton/fhir?{raw}", headers=AUTH)
    assert response.status_code == 422, response.text
    issues = outcome_issues(response)
    assert [issue["expression"] for issue in issues] == [[name] for name in named]
    assert all("it takes one value" in issue["diagnostics"] for issue in issues)
    assert not cms_mock.calls
    assert not connect_mock.calls


def test_list_parameters_may_repeat() -> None:
    assert repeated_single_values(["service_date", "service_date", "last_updated", "last_updated"]) == []
    assert repeated_single_values(["type", "resource_type", "type"]) == ["type"]
