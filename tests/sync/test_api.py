"""The operator API and enrolment through the real app (ASGITransport), a real database, the
in-process CMS emulator and an embedded worker."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jsonschema  # type: ignore[import-untyped]  # no stubs installed (types-jsonschema)
import pytest

from tests.factories import make_settings
from tests.running import open_client
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import Upstreams, sync_settings

KEY = {"X-API-Key": ADMIN_KEY}
USER = 2


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


async def _enrol(
    client: httpx.AsyncClient, upstreams: Upstreams, accept: str = "application/json", user: int = USER
) -> Any:
    """authorize?sync=true, then the callback with a code CMS exchanges for the user's tokens."""
    start = await client.get("/bluebutton/authorize", params={"sync": "true"})
    assert start.status_code == 200, start.text
    state = parse_qs(urlsplit(start.json()["authorize_url"]).query)["state"][0]
    tokens = upstreams.authorize(user)
    upstreams.code_answer = tokens
    answer = await client.get(
        "/bluebutton/authorize_callback",
        params={"code": "the-code", "state": state},
        headers={"Accept": accept},
    )
    return tokens, answer


async def _finished(client: httpx.AsyncClient, run_id: int) -> dict[str, Any]:
    for _ in range(2400):  # the embedded worker picks the job up; wait for the outcome, not a time
        run = (await client.get(f"/bluebutton/runs/{run_id}", headers=KEY)).json()
        if run["status"] not in ("queued", "running"):
            return dict(run)
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {run}")


async def test_enrol_with_sync_then_operate_the_grant(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    settings = sync_settings(database_url, token_keys, sync_worker="embedded")
    router = upstreams.router()
    with router:
        async with open_client(settings) as client:
            tokens, answer = await _enrol(client, upstreams)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert set(body) == {
                "grant_id",
                "run_id",
                "patient",
                "api_version",
                "scope",
                "access_grant_expiration",
                "access_token",
                "expires_in",
            }
            assert tokens.refresh_token not in answer.text  # the service owns the refresh chain
            grant_id = body["grant_id"]
            run = await _finished(client, body["run_id"])
            assert run["status"] == "succeeded"
            assert run["resources"]["ExplanationOfBenefit"]["new"] == 7, run

            listed = (await client.get("/bluebutton/grants", headers=KEY)).json()["grants"]
            assert [g["id"] for g in listed] == [grant_id]
            grant = (await client.get(f"/bluebutton/grants/{grant_id}", headers=KEY)).json()
            assert grant["state"] == "active" and grant["patient"] == tokens.patient
            assert grant["last_run"]["id"] == body["run_id"] and grant["quarantined"] == []
            revoked = (
                await client.get("/bluebutton/grants", params={"state": "revoked"}, headers=KEY)
            ).json()
            assert revoked["grants"] == [] and revoked["total"] == 0 and revoked["next_cursor"] is None
            assert revoked["counts"] == {
                "active": 1,
                "failing": 0,
                "expired": 0,
                "revoked": 0,
                "migrated": 0,
                "disconnected": 0,
            }
            records = (await client.get(f"/bluebutton/grants/{grant_id}/records", headers=KEY)).json()[
                "records"
            ]
            assert len(records) == 12

            again = await client.post(f"/bluebutton/grants/{grant_id}/sync", headers=KEY)
            assert again.status_code == 202
            second = await _finished(client, again.json()["run_id"])
            assert second["status"] == "succeeded" and second["bundles"] == []
            listed_runs = (await client.get(f"/bluebutton/grants/{grant_id}/runs", headers=KEY)).json()[
                "runs"
            ]
            assert [r["id"] for r in listed_runs] == [second["id"], run["id"]]

            gone = await client.delete(f"/bluebutton/grants/{grant_id}", headers=KEY)
            assert gone.status_code == 204
            assert len(upstreams.requests_to("/v2/o/revoke_token/")) == 2  # refresh and access token
            assert upstreams.tokens.refresh[tokens.refresh_token].revoked  # RFC 7009 at CMS
            grant = (await client.get(f"/bluebutton/grants/{grant_id}", headers=KEY)).json()
            assert grant["state"] == "disconnected" and grant["next_sync_at"] is None
            refused = await client.post(f"/bluebutton/grants/{grant_id}/sync", headers=KEY)
            assert refused.status_code == 409
            assert "disconnected" in refused.json()["issue"][0]["diagnostics"]
            assert (
                len(
                    (await client.get(f"/bluebutton/grants/{grant_id}/records", headers=KEY)).json()[
                        "records"
                    ]
                )
                == 12
            )


async def test_the_html_callback_says_the_data_is_kept_current(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    router = upstreams.router()
    with router:
        async with open_client(sync_settings(database_url, token_keys)) as client:
            tokens, answer = await _enrol(client, upstreams, accept="text/html")
            assert answer.status_code == 200
            assert 'id="grant-id"' in answer.text and 'id="kept-current"' in answer.text
            assert tokens.refresh_token not in answer.text
            assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="missing"),
        pytest.param({"X-API-Key": "x" * 40}, 401, id="wrong"),
        pytest.param({"X-API-Key": ADMIN_KEY[:-1]}, 401, id="prefix"),
        pytest.param(KEY, 404, id="right"),
    ],
)
async def test_the_operator_key_is_required(
    database_url: str, token_keys: str, headers: dict[str, str], status: int
) -> None:
    async with open_client(sync_settings(database_url, token_keys)) as client:
        answer = await client.get("/bluebutton/grants/00000000-0000-0000-0000-000000000000", headers=headers)
        assert answer.status_code == status
        assert answer.json()["resourceType"] == "OperationOutcome"
        if status == 401:
            assert "X-API-Key" in answer.json()["issue"][0]["diagnostics"]
        run = await client.get("/bluebutton/runs/1", headers=headers)
        assert run.status_code == status


async def test_without_an_admin_key_the_operator_api_is_off(database_url: str, token_keys: str) -> None:
    async with open_client(sync_settings(database_url, token_keys, admin_api_key=None)) as client:
        answer = await client.get("/bluebutton/grants", headers=KEY)
        assert answer.status_code == 503
        assert "BLUEBUTTON_ADMIN_API_KEY" in answer.json()["issue"][0]["diagnostics"]


async def test_without_a_database_sync_is_off_and_says_what_to_set() -> None:
    settings = make_settings(cms_client_id="c", cms_client_secret="s")
    async with open_client(settings) as client:
        for method, path in [
            ("GET", "/bluebutton/grants"),
            ("GET", "/bluebutton/grants/00000000-0000-0000-0000-000000000000"),
            ("POST", "/bluebutton/grants/00000000-0000-0000-0000-000000000000/sync"),
            ("DELETE", "/bluebutton/grants/00000000-0000-0000-0000-000000000000"),
            ("GET", "/bluebutton/runs/1"),
        ]:
            answer = await client.request(method, path, headers=KEY)
            assert answer.status_code == 503, path
            text = answer.json()["issue"][0]["diagnostics"]
            assert "BLUEBUTTON_DATABASE_URL" in text and "BLUEBUTTON_TOKEN_KEYS" in text
        assert (await client.get("/bluebutton/authorize", params={"sync": "true"})).status_code == 503
        assert (await client.get("/bluebutton/authorize")).status_code == 200


async def test_the_openapi_document_declares_the_api_key_scheme(database_url: str, token_keys: str) -> None:
    async with open_client(make_settings()) as client:
        schema = (await client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["AdminApiKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "BlueButtonToken" in schema["components"]["securitySchemes"]
    assert {"/bluebutton/grants", "/bluebutton/grants/{grant_id}/sync", "/bluebutton/runs/{run_id}"} <= set(
        schema["paths"]
    )


async def test_every_operator_answer_is_what_openapi_declares(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    """Real answers, a partial run with quarantined claims included, against the document's own
    response schemas; and the schemas are strict enough to refuse a wrong shape."""
    settings = sync_settings(database_url, token_keys, sync_worker="embedded")
    with upstreams.router():
        async with open_client(settings) as client:
            document = (await client.get("/openapi.json")).json()
            _, answer = await _enrol(client, upstreams, user=29900)  # 10 claims, 3 invalid
            body = answer.json()
            run = await _finished(client, body["run_id"])
            assert run["status"] == "partial" and run["resources"]["ExplanationOfBenefit"]["invalid"] == 3
            grant_id = body["grant_id"]
            queued = await client.post(f"/bluebutton/grants/{grant_id}/sync", headers=KEY)
            await _finished(client, queued.json()["run_id"])
            answers = {
                ("/bluebutton/grants", "get", "200"): await client.get("/bluebutton/grants", headers=KEY),
                ("/bluebutton/grants/{grant_id}", "get", "200"): await client.get(
                    f"/bluebutton/grants/{grant_id}", headers=KEY
                ),
                ("/bluebutton/grants/{grant_id}/runs", "get", "200"): await client.get(
                    f"/bluebutton/grants/{grant_id}/runs", headers=KEY
                ),
                ("/bluebutton/grants/{grant_id}/records", "get", "200"): await client.get(
                    f"/bluebutton/grants/{grant_id}/records", headers=KEY
                ),
                ("/bluebutton/runs/{run_id}", "get", "200"): await client.get(
                    f"/bluebutton/runs/{body['run_id']}", headers=KEY
                ),
                ("/bluebutton/grants/{grant_id}/sync", "post", "202"): queued,
            }

    def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator({**schema, "components": document["components"]})

    for (path, method, status), response in answers.items():
        assert response.status_code == int(status), (path, response.text)
        declared = document["paths"][path][method]["responses"][status]["content"]["application/json"]
        assert "$ref" in declared["schema"], path  # a model, not an untyped object
        validator(declared["schema"]).validate(response.json())

    grant = answers[("/bluebutton/grants/{grant_id}", "get", "200")].json()
    assert len(grant["quarantined"]) == 3
    assert all(issue.get("expression") for q in grant["quarantined"] for issue in q["issues"])
    assert all(None not in issue.values() for q in grant["quarantined"] for issue in q["issues"])
    grant_schema = validator({"$ref": "#/components/schemas/GrantInfo"})
    for broken in (
        {**grant, "state": "paused"},
        {k: v for k, v in grant.items() if k != "last_run"},
        {**grant, "last_run": {**grant["last_run"], "status": "done"}},
        {**grant, "quarantined": [{"resource_type": "ExplanationOfBenefit", "id": "x"}]},
    ):
        assert not grant_schema.is_valid(broken)
    run_schema = validator({"$ref": "#/components/schemas/RunInfo"})
    run = answers[("/bluebutton/runs/{run_id}", "get", "200")].json()
    assert not run_schema.is_valid({**run, "resources": {"ExplanationOfBenefit": {"fetched": 1}}})


async def test_grant_keeping_health_follows_the_workers(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    """No worker with a fresh heartbeat: 503 saying so, while /health stays 200; with the embedded
    worker registered: 200 with the same state /health reports."""
    standalone = sync_settings(database_url, token_keys, sync_worker="off")
    with upstreams.router():
        async with open_client(standalone) as client:
            stalled = await client.get("/health/grant-keeping")
            assert stalled.status_code == 503, stalled.text
            assert "no sync worker has a fresh heartbeat" in stalled.json()["issue"][0]["diagnostics"]
            health = await client.get("/health")
            assert health.status_code == 200
            assert health.json()["grant_keeping"]["progressing"] is False
        embedded = sync_settings(database_url, token_keys, sync_worker="embedded")
        async with open_client(embedded) as client:
            for _ in range(2400):  # the worker registers its heartbeat; wait for it, not a time
                answer = await client.get("/health/grant-keeping")
                if answer.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert answer.status_code == 200, answer.text
            state = answer.json()
            assert state["database"] == "reachable" and state["workers"] >= 1
            assert state["embedded_worker"] == "running" and state["progressing"] is True
