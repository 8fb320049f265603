"""The console in a real browser (Debian's Chromium via Playwright) against real processes: the
emulated CMS and connect, the connector with grant keeping on a real PostgreSQL and its embedded
worker. Sign in, connect a beneficiary through CMS's login and consent pages (sync=true), watch the
first run, add claims at CMS and press Sync now, then Disconnect.

A second connector on plain HTTP (127.0.0.1 and localhost) checks that Chromium keeps the console's
Secure cookie there too: loopback is a secure context.

Screenshots of each step go to `test-artifacts/browser/` (gitignored).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bluebutton.sandbox.tools.bench.grants import fill
from bluebutton.sandbox.tools.stack import CERTS, Stack, StackConfig, free_port, wait_ready
from bluebutton.sync.crypto import new_key
from bluebutton.web.console.routes import HOME, SESSION_COOKIE
from tests.e2e.harness import Harness, running_stack
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, Tab, approve_at_cms, spki_pin
from tests.sync.conftest import ADMIN_KEY, fresh_database

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

USER = 11
ADDED = 3
RUN_WAIT_MS = 240_000  # generous, not a measurement: a first run on a loaded two-core machine
ENDED = re.compile(r"^(succeeded|partial|failed)$")


# The e2e browser's arguments, but 127.0.0.1 reachable too (it serves the plain-HTTP connector).
RESOLVER = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium as in tests/e2e/test_browser.py (the `tab` fixture opens its pages in this one)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing")
    args = [a for a in CHROMIUM_ARGS if not a.startswith("--host-resolver-rules=")]
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*args, RESOLVER, f"--ignore-certificate-errors-spki-list={spki_pin(CERTS / 'server.pem')}"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def database(database_server: str) -> Iterator[str]:
    with fresh_database(database_server, "bluebutton_console") as url:
        yield url


@pytest.fixture(scope="module")
def stack(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("console-stack")
    sync_env = {
        "BLUEBUTTON_DATABASE_URL": database,
        "BLUEBUTTON_TOKEN_KEYS": new_key(),
        "BLUEBUTTON_ADMIN_API_KEY": ADMIN_KEY,
        "BLUEBUTTON_SYNC_WORKER": "embedded",
        "BLUEBUTTON_VALIDATION_WORKERS": "1",
        "BLUEBUTTON_CMS_RETRY_BACKOFF_SECONDS": "0.05",
    }
    config = StackConfig(
        connect_db=log_dir / "connect.sqlite3",
        connect_args=["--rate-limit", "0"],
        connector_env=sync_env,
        log_dir=log_dir,
    )
    with running_stack(config, lambda: f"(logs in {log_dir})") as running:
        yield running


@pytest.fixture(scope="module")
def plain_http(stack: Stack) -> str:
    """A second connector on the same database over plain HTTP on 127.0.0.1, without a worker."""
    port = free_port()
    args, env = stack.commands["connector"]
    stack.launch(
        "connector-http",
        args,
        {**env, "BLUEBUTTON_TLS": "false", "BLUEBUTTON_PORT": str(port), "BLUEBUTTON_SYNC_WORKER": "off"},
    )
    wait_ready(f"http://127.0.0.1:{port}/health", stack.processes["connector-http"])
    return str(port)


@pytest.fixture(scope="module")
def filled_console(stack: Stack, database_server: str) -> Iterator[str]:
    """A third connector over plain HTTP on 127.0.0.1, on a database of its own holding 250 grants
    filled by the paging benchmark's bulk SQL (80 % active, 8 % failing, ...)."""
    with fresh_database(database_server, "bluebutton_console_filled") as url:
        port = free_port()
        args, env = stack.commands["connector"]
        stack.launch(
            "connector-filled",
            args,
            {
                **env,
                "BLUEBUTTON_DATABASE_URL": url,
                "BLUEBUTTON_TLS": "false",
                "BLUEBUTTON_PORT": str(port),
                "BLUEBUTTON_SYNC_WORKER": "off",
            },
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/health", stack.processes["connector-filled"])
            fill(url, 250)
            yield f"http://127.0.0.1:{port}"
        finally:
            process = stack.processes.pop("connector-filled")  # stopped before its database goes
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def e2e(stack: Stack) -> Iterator[Harness]:
    harness = Harness(stack)
    try:
        yield harness
    finally:
        harness.close()


def sign_in(tab: Tab, base: str, key: str = ADMIN_KEY) -> None:
    page = tab.page
    page.goto(f"{base}{HOME}")
    page.wait_for_selector("#sign-in")
    page.fill("#key", key)
    page.click("#sign-in-button")


def enrol_at_cms(tab: Tab, user: int) -> None:
    """Approve at CMS with sync=true: the callback page says the data will be kept current."""
    approve_at_cms(tab, user)
    tab.page.wait_for_selector("#kept-current")
    tab.shoot("enrolled")


def api(e2e: Harness, path: str) -> Any:
    answer = e2e.client.get(f"{e2e.stack.connector_url}{path}", headers={"X-API-Key": ADMIN_KEY})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_operate_a_grant_from_the_console(tab: Tab, stack: Stack, e2e: Harness) -> None:
    from playwright.sync_api import expect

    page = tab.page
    console_messages: list[str] = []
    page.on("console", lambda message: console_messages.append(message.text))
    sign_in(tab, stack.connector_url, "not-the-key-" * 4)
    page.wait_for_selector("#sign-in-error")
    tab.shoot("wrong-key")
    sign_in(tab, stack.connector_url)
    page.wait_for_selector("#no-grants")
    tab.shoot("signed-in")
    # The nonce-tagged stylesheet applies under the page's CSP (and nothing was refused).
    assert page.locator("header").evaluate("e => getComputedStyle(e).borderBottomStyle") == "solid"

    page.click("#connect")
    enrol_at_cms(tab, USER)
    # The enrolment page's grant link opens the grant in the console (signed in: same browser).
    page.click("#grant-link")
    page.wait_for_selector("#state")
    assert page.url.startswith(f"{stack.connector_url}{HOME}/grants/")
    tab.shoot("grant-from-enrolment")

    page.goto(f"{stack.connector_url}{HOME}")
    row = page.locator("tr.grant")
    expect(row).to_have_count(1)
    grant_id = str(row.get_attribute("id")).removeprefix("grant-")
    assert row.locator("td.patient").inner_text() == e2e.cms_user(USER)["patient"]
    # The page reloads itself while the run is queued or running.
    expect(row.locator("td.run-status")).to_have_text(ENDED, timeout=RUN_WAIT_MS)
    tab.shoot("first-run")
    first = api(e2e, f"/bluebutton/grants/{grant_id}")["last_run"]
    new = sum(counts["new"] for counts in first["resources"].values())
    assert row.locator("td.count-new").inner_text() == str(new) and new > 0
    assert row.locator("td.state").inner_text() == "active"
    assert row.locator("td.days-left").inner_text().startswith("in ")
    claims = first["resources"]["ExplanationOfBenefit"]["new"]
    assert row.locator("td.claims-held").inner_text() == str(claims)
    assert row.locator("td.last-success").inner_text().endswith("UTC")

    added = e2e.client.post(f"{stack.cms_url}/_sandbox/add_claims", json={"user": USER, "count": ADDED})
    assert added.status_code == 200, added.text
    row.locator("button.sync-now").click()
    page.wait_for_selector("#queued")
    run_id = re.search(r"Run (\d+) queued", page.locator("#queued").inner_text())
    assert run_id is not None and int(run_id[1]) != first["id"]
    tab.shoot("sync-queued")
    run = page.locator(f"#run-{run_id[1]}")
    expect(run.locator("td.run-status")).to_have_text("succeeded", timeout=RUN_WAIT_MS)
    assert run.locator("td.count-new").inner_text() == str(ADDED)
    page.reload()  # the chart is drawn once the run has ended
    bars = page.locator("#run-chart rect.bar")
    expect(bars).to_have_count(2)
    # The second bar (the added claims) is drawn, under the page's CSP, in the stylesheet's colour.
    assert bars.nth(1).evaluate("e => getComputedStyle(e).fill") == "rgb(11, 92, 173)"
    assert bars.nth(1).evaluate("e => e.getBBox().height") > 0
    tab.shoot("sync-done", full_page=False)
    page.goto(f"{stack.connector_url}{HOME}")
    expect(row.locator("td.claims-held")).to_have_text(str(claims + ADDED))
    tab.shoot("grant-list")
    page.goto(f"{stack.connector_url}{HOME}/grants/{grant_id}")

    page.click("#disconnect")
    page.wait_for_selector("#confirm-disconnect")
    tab.shoot("confirm-disconnect")
    assert api(e2e, f"/bluebutton/grants/{grant_id}")["state"] == "active"  # nothing before the confirmation
    page.click("#confirm-disconnect")
    expect(page.locator("#state")).to_have_text("disconnected")
    assert page.locator("#sync-now").count() == 0
    tab.shoot("disconnected")
    assert api(e2e, f"/bluebutton/grants/{grant_id}")["state"] == "disconnected"
    assert [m for m in console_messages if "Content Security Policy" in m] == []
    assert tab.offsite == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_secure_cookie_works_over_plain_http_on_loopback(tab: Tab, plain_http: str, host: str) -> None:
    page = tab.page
    base = f"http://{host}:{plain_http}"
    sign_in(tab, base)
    page.wait_for_selector("#sign-out")  # signed in: the cookie came back on the next request
    tab.shoot("signed-in-over-http")
    cookies = {c["name"]: c for c in page.context.cookies(f"{base}{HOME}")}
    session = cookies[SESSION_COOKIE]
    assert (session["secure"], session["httpOnly"], session["sameSite"]) == (True, True, "Strict")
    assert session["path"] == HOME
    assert tab.offsite == []


def test_a_console_of_250_grants_pages_filters_and_explains(tab: Tab, filled_console: str) -> None:
    from playwright.sync_api import expect

    page = tab.page
    sign_in(tab, filled_console)
    expect(page.locator("tr.grant")).to_have_count(50)
    tab.shoot("250-grants")
    page.click("#next-page")
    expect(page.locator("#first-page")).to_be_visible()
    assert "50 shown of 250" in page.locator("#grants-pager").inner_text()
    page.click("#count-failing")
    rows = page.locator("tr.grant")
    expect(rows).to_have_count(16)
    assert "in a row" in rows.first.locator("td.state-reason").inner_text()
    tab.shoot("failing-grants")
    page.fill("#patient", "-1000000000012")
    page.select_option("#state", "")
    page.click("#search button")
    expect(rows).to_have_count(10)
    tab.shoot("patient-search")
    page.select_option("#state", "failing")
    page.fill("#patient", "")
    page.click("#search button")
    rows.first.locator("td.patient a").click()
    expect(page.locator("#run-chart rect.bar")).to_have_count(2)
    assert "503" in page.locator("#state-reason").inner_text()
    assert "503" in page.locator("#last-failure").inner_text()
    tab.shoot("failing-grant", full_page=False)
    assert tab.offsite == []


def test_another_page_cannot_frame_the_console(tab: Tab, stack: Stack) -> None:
    """frame-ancestors 'none': Chromium refuses to render the console inside another page."""
    page = tab.page
    with page.expect_console_message(lambda message: "frame-ancestors 'none'" in message.text):
        page.set_content(f'<iframe id="framed" src="{stack.connector_url}{HOME}"></iframe>')
    frame = page.locator("#framed").element_handle().content_frame()
    assert frame is not None and frame.locator("#sign-in").count() == 0
