"""Real Blue Button responses (`../shared/bb2-samples/`) through the whole pipeline: the valid ones
reach connect unchanged in content, the invalid ones give 422 naming the right entries and paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pydantic
import pytest
import respx
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import BundleEntry

from tests.factories import AUTH, CMS_ORIGIN, SANDBOX_ORIGIN, fhir_response, make_settings
from tests.fakes import Connect, serve_pages
from tests.running import open_client
from tests.wire import outcome_issues

pytestmark = pytest.mark.usefixtures("cms_sleeps", "connect_sleeps")

Loader = Callable[[str], dict[str, Any]]


def as_single_page(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample as the only page of its search: its `next` (to another CMS host) dropped."""
    sample["link"] = [link for link in sample.get("link", []) if link.get("relation") != "next"]
    return sample


def rewritten(sample: dict[str, Any]) -> dict[str, Any]:
    """A sandbox page with its links pointing at the mock CMS."""
    for link in sample.get("link", []):
        link["url"] = link["url"].replace(SANDBOX_ORIGIN, CMS_ORIGIN)
    return sample


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def expected_problems(entries: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """Element path -> (entry index, resource id), straight from fhir.resources R4B."""
    found: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(entries):
        resource = entry["resource"]
        checks: list[tuple[Any, dict[str, Any], str]] = [
            (BundleEntry, {k: v for k, v in entry.items() if k != "resource"}, f"Bundle.entry[{index}]"),
            (get_fhir_model_class(resource["resourceType"]), resource, f"Bundle.entry[{index}].resource"),
        ]
        for model, value, prefix in checks:
            try:
                model.model_validate(value)
            except pydantic.ValidationError as e:
                for error in e.errors():
                    found[_path(prefix, error["loc"])] = (index, resource.get("id", "?"))
    return found


async def get(client: httpx.AsyncClient, resource_type: str, **params: str) -> httpx.Response:
    return await client.get(
        "/bluebutton/fhir", params={"resource_type": resource_type, **params}, headers=AUTH
    )


VALID = [
    pytest.param("patient_search_v2.json", "Patient", id="patient_search_v2"),
    pytest.param("coverage_search_v2.json", "Coverage", id="coverage_search_v2"),
    pytest.param("eob_search_sample_client.json", "ExplanationOfBenefit", id="eob_search_sample_client"),
]


@pytest.mark.parametrize(("name", "resource_type"), VALID)
async def test_valid_sample_reaches_connect_unchanged(
    client: httpx.AsyncClient,
    cms_mock: respx.MockRouter,
    connect: Connect,
    load_sample: Loader,
    name: str,
    resource_type: str,
) -> None:
    sample = as_single_page(load_sample(name))
    assert expected_problems(sample["entry"]) == {}  # the README's claim, checked independently
    cms_mock.get(resource_type).mock(return_value=fhir_response(sample))

    response = await get(client, resource_type, return_cms="true")

    assert response.status_code == 200, response.text[:2000]
    stored = [entry for bundle in connect.stored_bundles for entry in bundle["entry"]]
    assert stored == sample["entry"]
    for call in connect.route.calls:
        assert len(call.request.content) <= 600_000
    merged = response.json()
    assert merged["entry"] == sample["entry"]
    assert merged["total"] == len(sample["entry"])


async def test_large_sample_split_for_connect_keeps_content(
    cms_mock: respx.MockRouter, connect: Connect, load_sample: Loader
) -> None:
    sample = as_single_page(load_sample("eob_search_sample_client.json"))
    cms_mock.get("ExplanationOfBenefit").mock(return_value=fhir_response(sample))
    limit = 150_000
    async with open_client(make_settings(lfh_max_bundle_bytes=limit)) as client:
        response = await get(client, "ExplanationOfBenefit")
    assert response.status_code == 200, response.text[:2000]
    assert len(connect.route.calls) > 1
    for call in connect.route.calls:
        assert len(call.request.content) <= limit
        assert orjson.loads(call.request.content)["type"] == "searchset"
    stored = [entry for bundle in connect.stored_bundles for entry in bundle["entry"]]
    assert stored == sample["entry"]
    answer = response.json()
    assert answer["bundle_count"] == len(connect.route.calls)
    assert answer["entry_count"] == len(sample["entry"])


def assert_422_names(response: httpx.Response, expected: dict[str, tuple[int, str]]) -> None:
    assert response.status_code == 422, response.text[:2000]
    located = [issue for issue in outcome_issues(response) if issue.get("expression")]
    assert sorted(i["expression"][0] for i in located) == sorted(expected)  # one issue per problem
    for issue in located:
        index, resource_id = expected[issue["expression"][0]]
        assert f"entry {index}" in issue["diagnostics"]
        assert resource_id in issue["diagnostics"]


@pytest.mark.parametrize("name", ["eob_search_v2.json", "eob_search_pt_v2.json"])
async def test_invalid_sample_is_422_naming_entries_and_paths(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, load_sample: Loader, name: str
) -> None:
    sample = as_single_page(load_sample(name))
    expected = expected_problems(sample["entry"])
    assert expected
    cms_mock.get("ExplanationOfBenefit").mock(return_value=fhir_response(sample))
    response = await get(client, "ExplanationOfBenefit")
    assert_422_names(response, expected)
    assert not connect.route.calls


async def test_six_page_sandbox_search_is_422_naming_entries_across_pages(
    client: httpx.AsyncClient, cms_mock: respx.MockRouter, connect: Connect, load_sample: Loader
) -> None:
    pages = [rewritten(load_sample(f"eob_pages_p{n}.json")) for n in range(6)]
    entries = [entry for page in pages for entry in page["entry"]]
    assert len(entries) == 52
    expected = expected_problems(entries)
    assert {index for index, _ in expected.values()} & set(range(50, 52))  # problems on the last page too
    route = serve_pages(cms_mock, "ExplanationOfBenefit", pages)

    response = await get(client, "ExplanationOfBenefit")

    assert_422_names(response, expected)
    assert route.call_count == 6
    assert sorted(int(c.request.url.params.get("startIndex", "0")) for c in route.calls) == [
        0,
        10,
        20,
        30,
        40,
        50,
    ]
    assert not connect.route.calls
