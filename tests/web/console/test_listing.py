"""The console's paged grant list and grant page over 250 grants filled by the paging benchmark's
bulk SQL: pages by cursor, the state filter with counts, the patient search, the operator's
columns, and a grant page with its run chart, its last failure and paged records."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg

from bluebutton.sandbox.tools.bench.grants import fill
from bluebutton.web.console.routes import GRANTS_SHOWN, HOME, SIGN_IN_COOKIE
from tests.sync.emulated import sync_settings
from tests.web.console.conftest import ConsoleTime, Page, console_client
from tests.web.console.test_routes import cell, row_of, sign_in

GRANTS = 250


@asynccontextmanager
async def signed_in(database_url: str, token_keys: str) -> AsyncIterator[httpx.AsyncClient]:
    async with console_client(sync_settings(database_url, token_keys), ConsoleTime()) as client:
        fill(database_url, GRANTS)
        assert (await sign_in(client)).status_code == 303
        assert SIGN_IN_COOKIE not in client.cookies
        yield client


def grant_rows(html: str) -> list[str]:
    return re.findall(r'<tr id="grant-([0-9a-f-]+)" class="grant">', html)


def link(html: str, element_id: str) -> str | None:
    found = re.search(rf'id="{element_id}" href="([^"]+)"', html)
    return found[1].replace("&amp;", "&") if found else None


async def test_the_grant_list_pages_filters_and_searches(database_url: str, token_keys: str) -> None:
    async with signed_in(database_url, token_keys) as client:
        home = (await client.get(HOME)).text
        seen = grant_rows(home)
        assert len(seen) == GRANTS_SHOWN and link(home, "first-page") is None
        assert re.search(r'id="count-failing"[^>]*>failing 16<', home)
        page = home
        while (following := link(page, "next-page")) is not None:
            page = (await client.get(following)).text
            assert link(page, "first-page") == HOME
            seen += grant_rows(page)
        assert len(seen) == len(set(seen)) == GRANTS
        assert f"{GRANTS_SHOWN} shown of 250" in home

        failing = (await client.get(HOME, params={"state": "failing", "patient": ""})).text
        rows = grant_rows(failing)
        assert len(rows) == 16 and link(failing, "next-page") is None
        row = row_of(failing, f"grant-{rows[0]}")
        assert cell(row, "state") == "failing" and "in a row" in cell(row, "state-reason")
        assert "503" in cell(row, "state-reason") and cell(row, "run-status") == "failed"
        assert cell(row, "claims-held") == "5" and cell(row, "last-success").endswith("UTC")
        assert 'class="current">failing 16<' in failing and "selected>failing<" in failing

        search = (await client.get(HOME, params={"patient": "-10000000000123"})).text
        assert len(grant_rows(search)) == 1 and "-10000000000123" in search
        assert re.search(r'id="patient" name="patient" value="-10000000000123"', search)
        nothing = (await client.get(HOME, params={"patient": "nobody"})).text
        assert "No grant matches." in nothing and "no-grants" in Page(nothing).ids

        refused = await client.get(HOME, params={"state": "paused"})
        assert refused.status_code == 422 and "paused" in refused.json()["issue"][0]["diagnostics"]
        control = await client.get(HOME, params={"patient": "-100\x00"})
        assert control.status_code == 422 and "patient" in control.json()["issue"][0]["diagnostics"]
        bad = await client.get(HOME, params={"cursor": "nonsense"})
        assert bad.status_code == 422 and bad.json()["issue"][0]["expression"] == ["cursor"]


async def test_a_grant_page_charts_its_runs_and_pages_its_records(database_url: str, token_keys: str) -> None:
    async with signed_in(database_url, token_keys) as client:
        failing = (await client.get(HOME, params={"state": "failing"})).text
        grant_id = grant_rows(failing)[0]
        page = (await client.get(f"{HOME}/grants/{grant_id}")).text
        ids = Page(page).ids
        assert {"run-chart", "state-reason", "last-failure", "last-success", "held"} <= ids
        assert len(re.findall(r'<rect class="bar( failed)?"', page)) == 2  # both runs, oldest first
        assert re.search(r'<rect class="bar failed"[^>]*><title>Run \d+, [^<]*: failed</title>', page)
        assert re.search(r"<title>Run \d+, [^<]*: 5 new claims</title>", page)
        assert "Blue Button answered 503" in page
        assert "5 claims, 10 resources in all" in page
        assert page.count('<tr class="record">') == 10 and "more-records" not in ids

        # records past the first page: the ledger of this grant, grown past a page
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO bluebutton_ledger (grant_id, resource_type, resource_id, content_hash, "
                "record_uuid, data_record_location) SELECT %s, 'ExplanationOfBenefit', 'extra-' || k, "
                "'\\x00', 'u', 'loc' FROM generate_series(1, 150) AS k",
                (grant_id,),
            )
        first = (await client.get(f"{HOME}/grants/{grant_id}")).text
        assert first.count('<tr class="record">') == 100
        more = link(first, "more-records")
        assert more is not None and "records" in parse_qs(urlsplit(more).query)
        second = (await client.get(more)).text
        assert second.count('<tr class="record">') == 60 and link(second, "more-records") is None
        assert link(second, "first-records") == f"{HOME}/grants/{grant_id}"
