"""The console through the real app: sign-in, refusals (wrong key, no cookie, no CSRF token,
expiry), and the pages and buttons over grants enrolled with the real sync=true callback."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bluebutton.web.console.pages import instant
from bluebutton.web.console.routes import HOME, SESSION_COOKIE, WRONG_KEY_DELAY
from bluebutton.web.console.session import SESSION_SECONDS
from tests.factories import make_settings
from tests.sync.conftest import ADMIN_KEY
from tests.sync.emulated import Upstreams, drain, open_service, sync_settings
from tests.web.console.conftest import ConsoleTime, Page, console_client

KEY = {"X-API-Key": ADMIN_KEY}
USER = 29900  # 10 claims, 3 of them invalid R4: a partial run with quarantined entries
SIGN_IN = f"{HOME}/sign-in"
NO_GRANT = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@pytest.fixture
def clock() -> ConsoleTime:
    return ConsoleTime()


async def sign_in(client: httpx.AsyncClient, key: str = ADMIN_KEY) -> httpx.Response:
    form = await client.get(HOME)
    assert form.status_code == 200, form.text
    fields = Page(form.text).forms[SIGN_IN]
    return await client.post(SIGN_IN, data={**fields, "key": key})


async def enrol(client: httpx.AsyncClient, upstreams: Upstreams, grant_days: int = 396) -> dict[str, Any]:
    """authorize?sync=true, then the callback with a code the emulated CMS exchanges."""
    start = await client.get("/bluebutton/authorize", params={"sync": "true"})
    state = parse_qs(urlsplit(start.json()["authorize_url"]).query)["state"][0]
    tokens = upstreams.authorize(USER)
    ends = datetime.now(UTC) + timedelta(days=grant_days, hours=12)
    upstreams.code_answer = dataclasses.replace(tokens, access_grant_expiration=ends.isoformat())
    answer = await client.get("/bluebutton/authorize_callback", params={"code": "the-code", "state": state})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def row_of(html: str, element_id: str) -> str:
    match = re.search(rf'<tr id="{re.escape(element_id)}".*?</tr>', html, re.DOTALL)
    assert match is not None, f"no row {element_id}"
    return match[0]


def cell(row: str, css_class: str) -> str:
    match = re.search(rf'<td class="[^"]*\b{re.escape(css_class)}\b[^"]*"[^>]*>(.*?)</td>', row, re.DOTALL)
    assert match is not None, f"no cell {css_class} in {row}"
    return re.sub(r"<[^>]+>", "", match[1]).strip()


async def test_signing_in_sets_a_strict_secure_session_cookie(
    database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    async with console_client(sync_settings(database_url, token_keys), clock) as client:
        form = await client.get(HOME)
        assert form.status_code == 200 and "sign-in" in Page(form.text).ids
        assert "grants" not in Page(form.text).ids

        answer = await sign_in(client)
        assert answer.status_code == 303 and answer.headers["location"] == HOME
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "secure", "samesite", "max-age", "path"} <= attributes
        assert "samesite=strict" in cookie.lower() and f"max-age={SESSION_SECONDS}" in cookie.lower()
        assert f"path={HOME}" in cookie.lower() and SESSION_SECONDS == 8 * 3600

        home = await client.get(HOME)
        assert home.status_code == 200
        page = Page(home.text)
        assert {"no-grants", "connect", "sign-out"} <= page.ids and "sign-in" not in page.ids
        assert 'href="/bluebutton/authorize?sync=true"' in home.text
        assert clock.pauses == []

        out = await client.post(f"{HOME}/sign-out", data=page.forms[f"{HOME}/sign-out"])
        assert out.status_code == 303 and SESSION_COOKIE not in client.cookies
        assert "sign-in" in Page((await client.get(HOME)).text).ids


async def test_console_pages_carry_a_nonce_csp_that_forbids_framing(
    database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    async with console_client(sync_settings(database_url, token_keys), clock) as client:
        first, second = await client.get(HOME), await client.get(HOME)
    policies = []
    for answer in (first, second):
        policy = answer.headers["content-security-policy"]
        nonce = re.search(r"style-src 'nonce-([^']+)'", policy)
        assert nonce is not None
        assert Page(answer.text).styles == [{"nonce": nonce[1]}]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert "script-src" not in policy and "<script" not in answer.text
        assert answer.headers["cache-control"] == "no-store"
        policies.append(nonce[1])
    assert policies[0] != policies[1]


async def test_a_wrong_key_shows_the_form_again_after_a_delay(
    database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    async with console_client(sync_settings(database_url, token_keys), clock) as client:
        for wrong in ("x" * 40, ADMIN_KEY[:-1], ""):
            answer = await sign_in(client, wrong)
            assert answer.status_code == 401
            page = Page(answer.text)
            assert {"sign-in", "sign-in-error"} <= page.ids
            assert "not the admin key" in answer.text
            assert SESSION_COOKIE not in client.cookies
        assert clock.pauses == [WRONG_KEY_DELAY] * 3
        assert "sign-in" in Page((await client.get(HOME)).text).ids  # still signed out


async def test_a_sign_in_post_without_the_forms_token_is_refused(
    database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    async with console_client(sync_settings(database_url, token_keys), clock) as client:
        await client.get(HOME)  # the pre-session cookie, but no token in the post
        answer = await client.post(SIGN_IN, data={"key": ADMIN_KEY})
        assert answer.status_code == 403 and "sign-in-error" in Page(answer.text).ids
        assert SESSION_COOKIE not in client.cookies
    async with console_client(sync_settings(database_url, token_keys), clock) as client:
        form = Page((await client.get(HOME)).text).forms[SIGN_IN]
        client.cookies.clear()  # a token from a page this browser never got
        answer = await client.post(SIGN_IN, data={**form, "key": ADMIN_KEY})
        assert answer.status_code == 403 and SESSION_COOKIE not in client.cookies


async def test_without_an_admin_key_the_page_says_how_to_set_one(database_url: str, token_keys: str) -> None:
    settings = sync_settings(database_url, token_keys, admin_api_key=None)
    async with console_client(settings, ConsoleTime()) as client:
        answer = await client.get(HOME)
        assert answer.status_code == 503
        assert "not-configured" in Page(answer.text).ids and "sign-in" not in Page(answer.text).ids
        assert "BLUEBUTTON_ADMIN_API_KEY" in answer.text and "secrets.token_urlsafe(32)" in answer.text
        refused = await client.post(f"{HOME}/grants/{NO_GRANT}/sync", data={"csrf": "x"})
        assert refused.status_code == 503
        assert "BLUEBUTTON_ADMIN_API_KEY" in refused.json()["issue"][0]["diagnostics"]


async def test_without_a_database_the_page_says_what_to_set() -> None:
    settings = make_settings(admin_api_key=ADMIN_KEY)
    async with console_client(settings, ConsoleTime()) as client:
        answer = await client.get(HOME)
        assert answer.status_code == 503
        assert "BLUEBUTTON_DATABASE_URL" in answer.text and "BLUEBUTTON_TOKEN_KEYS" in answer.text
        form = await client.post(SIGN_IN, data={"key": ADMIN_KEY})
        assert form.status_code == 503 and SESSION_COOKIE not in client.cookies
        refused = await client.post(f"{HOME}/grants/{NO_GRANT}/sync", data={"csrf": "x"})
        assert refused.status_code == 503
        assert "BLUEBUTTON_DATABASE_URL" in refused.json()["issue"][0]["diagnostics"]


async def test_requests_without_the_cookie_are_sent_to_sign_in_or_refused(
    upstreams: Upstreams, database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    with upstreams.router():
        async with console_client(sync_settings(database_url, token_keys), clock) as client:
            grant_id = (await enrol(client, upstreams))["grant_id"]
            for path in (f"/grants/{grant_id}", f"/grants/{grant_id}/disconnect", "/runs/1"):
                answer = await client.get(HOME + path)
                assert answer.status_code == 303 and answer.headers["location"] == HOME, path
            for path in (f"/grants/{grant_id}/sync", f"/grants/{grant_id}/disconnect", "/sign-out"):
                answer = await client.post(HOME + path, data={"csrf": "anything"})
                assert answer.status_code == 401, path
                assert f"sign in at {HOME}" in answer.json()["issue"][0]["diagnostics"]
            forged = (await sign_in(client)).cookies[SESSION_COOKIE][:-2] + "AA"
            client.cookies.clear()
            client.cookies.set(SESSION_COOKIE, forged, domain="test", path=HOME)
            assert (await client.get(f"{HOME}/grants/{grant_id}")).status_code == 303
            grant = (await client.get(f"/bluebutton/grants/{grant_id}", headers=KEY)).json()
            assert grant["state"] == "active"  # nothing done


async def test_a_post_without_the_csrf_token_is_refused_and_does_nothing(
    upstreams: Upstreams, database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    with upstreams.router():
        async with console_client(sync_settings(database_url, token_keys), clock) as client:
            grant_id = (await enrol(client, upstreams))["grant_id"]
            runs_before = (await client.get(f"/bluebutton/grants/{grant_id}/runs", headers=KEY)).json()
            await sign_in(client)
            real = Page((await client.get(f"{HOME}/grants/{grant_id}")).text).forms
            token = real[f"{HOME}/grants/{grant_id}/sync"]["csrf"]
            other = real[f"{HOME}/sign-out"]["csrf"]
            assert token == other  # one token per session, on every form
            for data in ({}, {"csrf": ""}, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}):
                for action in ("sync", "disconnect"):
                    answer = await client.post(f"{HOME}/grants/{grant_id}/{action}", data=data)
                    assert answer.status_code == 403, (action, data)
                    assert "CSRF" in answer.json()["issue"][0]["diagnostics"]
            assert (
                await client.get(f"/bluebutton/grants/{grant_id}/runs", headers=KEY)
            ).json() == runs_before
            grant = (await client.get(f"/bluebutton/grants/{grant_id}", headers=KEY)).json()
            assert grant["state"] == "active"
            assert upstreams.requests_to("/v2/o/revoke_token/") == []


async def test_a_session_ends_after_eight_hours(
    database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    async with console_client(sync_settings(database_url, token_keys), clock) as client:
        signed_in_at = clock.now
        await sign_in(client)
        form = Page((await client.get(HOME)).text).forms[f"{HOME}/sign-out"]
        clock.now = signed_in_at + SESSION_SECONDS - 1
        assert "no-grants" in Page((await client.get(HOME)).text).ids
        clock.now = signed_in_at + SESSION_SECONDS
        page = Page((await client.get(HOME)).text)
        assert "sign-in" in page.ids and "no-grants" not in page.ids
        refused = await client.post(f"{HOME}/sign-out", data=form)
        assert refused.status_code == 401


async def test_grants_runs_records_sync_now_and_disconnect(
    upstreams: Upstreams, database_url: str, token_keys: str, clock: ConsoleTime
) -> None:
    settings = sync_settings(database_url, token_keys)
    with upstreams.router():
        async with console_client(settings, clock) as client, open_service(settings) as worker:
            enrolled = await enrol(client, upstreams, grant_days=12)
            grant_id = enrolled["grant_id"]
            await drain(worker)
            assert (await sign_in(client)).status_code == 303

            home = (await client.get(HOME)).text
            row = row_of(home, f"grant-{grant_id}")
            assert cell(row, "patient") == enrolled["patient"]
            assert cell(row, "state") == "active"
            invalid = len(upstreams.dataset.invalid_claim_ids(USER))
            api = (await client.get(f"/bluebutton/grants/{grant_id}", headers=KEY)).json()
            new = sum(counts["new"] for counts in api["last_run"]["resources"].values())
            assert cell(row, "run-status") == "partial"  # invalid claims quarantined
            assert (cell(row, "count-new"), cell(row, "count-invalid")) == (str(new), str(invalid))
            assert cell(row, "quarantined") == str(invalid) == str(len(api["quarantined"]))
            assert cell(row, "days-left").startswith("in 12 days") and 'class="days-left soon"' in row
            assert cell(row, "next-sync") == instant(api["next_sync_at"]) != "—"
            assert '<meta http-equiv="refresh"' not in home  # nothing in progress

            grant_page = await client.get(f"{HOME}/grants/{grant_id}")
            records = (await client.get(f"/bluebutton/grants/{grant_id}/records", headers=KEY)).json()
            assert grant_page.text.count('<tr class="record">') == len(records["records"]) > 0
            for record in records["records"]:
                assert record["data_record_location"] in grant_page.text
            for held in api["quarantined"]:
                assert held["id"] in grant_page.text
            run_page = await client.get(f"{HOME}/runs/{enrolled['run_id']}")
            assert 'id="run-status">partial<' in run_page.text
            eob = row_of(run_page.text, "resources-ExplanationOfBenefit")
            assert cell(eob, "count-fetched") == "10" and cell(eob, "count-invalid") == str(invalid)

            missing = await client.get(f"{HOME}/runs/{enrolled['run_id'] + 1000}")
            assert missing.status_code == 404 and "No run" in missing.json()["issue"][0]["diagnostics"]
            unknown = await client.get(f"{HOME}/grants/{NO_GRANT}")
            assert unknown.status_code == 404

            csrf = Page(grant_page.text).forms[f"{HOME}/grants/{grant_id}/sync"]
            queued = await client.post(f"{HOME}/grants/{grant_id}/sync", data=csrf)
            assert queued.status_code == 303
            run_id = int(parse_qs(urlsplit(queued.headers["location"]).query)["queued"][0])
            waiting = await client.get(queued.headers["location"])
            assert "queued" in Page(waiting.text).ids and '<meta http-equiv="refresh"' in waiting.text
            assert cell(row_of(waiting.text, f"run-{run_id}"), "run-status") == "queued"
            await drain(worker)
            after = await client.get(f"{HOME}/grants/{grant_id}")
            second = row_of(after.text, f"run-{run_id}")
            shown = (await client.get(f"/bluebutton/runs/{run_id}", headers=KEY)).json()
            assert cell(second, "run-status") == shown["status"] == "succeeded"
            for name in ("fetched", "new", "changed", "unchanged", "invalid"):
                expected = sum(counts[name] for counts in shown["resources"].values())
                assert cell(second, f"count-{name}") == str(expected), name
            assert cell(second, "count-new") == "0"  # nothing stored twice

            confirm = await client.get(f"{HOME}/grants/{grant_id}/disconnect")
            assert "confirm-disconnect" in Page(confirm.text).ids
            assert (await client.get(f"/bluebutton/grants/{grant_id}", headers=KEY)).json()[
                "state"
            ] == "active"
            fields = Page(confirm.text).forms[f"{HOME}/grants/{grant_id}/disconnect"]
            done = await client.post(f"{HOME}/grants/{grant_id}/disconnect", data=fields)
            assert done.status_code == 303
            gone = await client.get(done.headers["location"])
            assert re.search(r'id="state"[^>]*>disconnected<', gone.text)
            assert "sync-now" not in Page(gone.text).ids and "disconnect" not in Page(gone.text).ids
            assert len(upstreams.requests_to("/v2/o/revoke_token/")) == 2
            row = row_of((await client.get(HOME)).text, f"grant-{grant_id}")
            assert cell(row, "state") == "disconnected" and cell(row, "next-sync") == "—"
