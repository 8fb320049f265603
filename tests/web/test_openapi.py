"""The OpenAPI document says what the service does (issue 11): the media type of every error, the
400 of an unparseable body, the 503s, the EOB-only parameters, an example id that works in the demo."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.factories import FHIR_JSON, REFRESH, REVOKE
from tests.wire import diagnostics, outcome_issues

OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await client.get("/openapi.json")).json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def test_every_error_is_documented_as_an_operation_outcome(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"] == {FHIR_JSON: {"schema": OUTCOME}}, (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_callback_422_is_fhir_json_as_documented(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    response = await client.get("/bluebutton/authorize_callback", params={"state": "x" * 600})
    assert response.status_code == 422
    assert response.headers["content-type"] == FHIR_JSON
    documented = document["paths"]["/bluebutton/authorize_callback"]["get"]["responses"]["422"]
    assert list(documented["content"]) == [FHIR_JSON]


@pytest.mark.parametrize("path", [REFRESH, REVOKE])
@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b'{"token": "\xff"}', 400, id="not-utf-8"),
        pytest.param(b'{"token": ', 422, id="truncated-json"),
    ],
)
async def test_unparseable_body_is_a_documented_clear_error(
    client: httpx.AsyncClient, document: dict[str, Any], path: str, body: bytes, status: int
) -> None:
    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert str(status) in document["paths"][path]["post"]["responses"]
    text = diagnostics(response)
    assert "JSON" in text and "{" in text, text  # says what is wrong and shows the shape to send
    assert outcome_issues(response)[0]["code"] == "invalid"


def test_fhir_documents_its_503(document: dict[str, Any]) -> None:
    assert "503" in document["paths"]["/bluebutton/fhir"]["get"]["responses"]


def test_eob_only_parameters_say_so(document: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in document["paths"]["/bluebutton/fhir"]["get"]["parameters"]}
    for name in ("type", "service_date"):
        assert parameters[name]["description"].startswith("ExplanationOfBenefit only"), name
    assert "ExplanationOfBenefit only" not in parameters["last_updated"]["description"]


def test_the_example_patient_is_one_of_the_demo(document: dict[str, Any]) -> None:
    from bluebutton.sandbox.cms.data import user_for_patient_id

    parameters = {p["name"]: p for p in document["paths"]["/bluebutton/fhir"]["get"]["parameters"]}
    patient = parameters["patient"]
    example = patient["schema"]["examples"][0]
    assert user_for_patient_id(example) is not None
    assert example in patient["description"]
    assert "-20140000008325" not in patient["description"]


@pytest.mark.parametrize("path", ["/bluebutton/refresh", "/bluebutton/revoke"])
def test_token_routes_document_their_413(document: dict[str, Any], path: str) -> None:
    assert "413" in document["paths"][path]["post"]["responses"]
