"""A 405's `Allow` lists every method the path serves (issue 18), not only the first route's."""

from __future__ import annotations

import httpx
import pytest

from tests.wire import outcome_issues

GRANT = "/bluebutton/grants/00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("PUT", GRANT, "DELETE, GET", id="grant"),
        pytest.param("PATCH", GRANT, "DELETE, GET", id="grant-patch"),
        pytest.param("GET", f"{GRANT}/sync", "POST", id="sync"),
        pytest.param("POST", "/bluebutton/fhir", "GET", id="fhir"),
        pytest.param("GET", "/bluebutton/revoke", "POST", id="revoke"),
    ],
)
async def test_allow_names_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert outcome_issues(response)[0]["code"] == "not-supported"
