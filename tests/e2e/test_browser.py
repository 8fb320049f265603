"""A person's path through the product in a real browser: Debian's Chromium driven by Playwright.

The browser trusts the stack's certificate by its public key: Chromium is started with
`--ignore-certificate-errors-spki-list=<base64 SHA-256 of the SPKI of local-certs/server.pem>`, so
any other certificate is still refused (no `ignore_https_errors`). It reaches nothing but loopback:
the host resolver knows only localhost, and every request of the page to another host is aborted
(and recorded).

`/docs` must work offline: Swagger UI's files come from the connector itself, never from a CDN.

Screenshots of each step go to `test-artifacts/browser/` (gitignored).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bluebutton.sandbox.tools.stack import CERTS, ROOT, Stack
from tests.e2e.harness import LOOPBACK, Harness

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("healthy")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# Generous waits, not measurements: a loaded two-core machine renders slowly, and a wait that
# ends early costs nothing.
TIMEOUT_MS = 60_000
SWAGGER_TIMEOUT_MS = 30_000
BIG_ANSWER_TIMEOUT_MS = 240_000

# Separate users from the httpx tests: a new grant revokes the user's earlier tokens.
LOGIN_USER = 28
SWAGGER_USER = 8
BIG_USER = 527  # 200 claims, the most a user has: megabytes of JSON with return_cms=true


def spki_pin(certificate: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)), the form `--ignore-certificate-errors-spki-list` takes."""
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_pin(CERTS / 'server.pem')}"],
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """One page of a fresh browser context, with its screenshots and the requests it was refused."""

    page: Any
    shoot: Callable[..., Path]
    offsite: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser: Any, request: pytest.FixtureRequest) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    prefix = re.sub(r"\W+", "-", request.node.name).strip("-")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{prefix}-*.png"):
        old.unlink()
    steps = iter(range(1, 100))

    def shoot(step: str, *, full_page: bool = True) -> Path:
        path = ARTIFACTS / f"{prefix}-{next(steps):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    tab = Tab(page, shoot)

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            tab.offsite.append(url)
            route.abort("blockedbyclient")

    page.route("**/*", guard)
    try:
        yield tab
    finally:
        context.close()


def approve_at_cms(tab: Tab, user: int) -> None:
    """On the emulated CMS pages: log in, share everything, allow; returns on the callback page."""
    page = tab.page
    page.wait_for_selector("#username")
    tab.shoot("cms-login")
    page.fill("#username", f"BBUser{user:05d}")
    page.fill("#password", f"PW{user:05d}!")
    page.click("#login")
    page.wait_for_selector("#allow")
    tab.shoot("cms-consent")
    page.check("#share-all")
    page.click("#allow")
    page.wait_for_url("**/bluebutton/authorize_callback?**")


def log_in_and_approve(tab: Tab, user: int) -> str:
    """Approve at CMS; the token from the callback page."""
    approve_at_cms(tab, user)
    page = tab.page
    token = str(page.locator("#access-token").input_value())
    tab.shoot("callback")
    assert token
    return token


def test_login_and_consent_in_the_browser(tab: Tab, stack: Stack, e2e: Harness) -> None:
    """A browser opening `/bluebutton/authorize` is sent to CMS and comes back with a token."""
    page = tab.page
    page.goto(f"{stack.connector_url}/bluebutton/authorize")
    assert page.url.startswith(f"{stack.cms_url}/")

    token = log_in_and_approve(tab, LOGIN_USER)

    assert page.locator("#demographics-warning").count() == 0
    assert page.locator("#patient").inner_text() == e2e.cms_user(LOGIN_USER)["patient"]
    assert page.locator("#docs-link").get_attribute("href") == "/docs"
    response = e2e.fhir(token, "ExplanationOfBenefit")
    assert response.status_code == 200, response.text
    assert tab.offsite == []


def _swagger_ready(tab: Tab) -> None:
    """Wait for Swagger UI to render (it cannot if its files had to come from another host)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        tab.page.wait_for_selector("#swagger-ui .information-container", timeout=SWAGGER_TIMEOUT_MS)
    except PlaywrightTimeout:
        tab.shoot("docs-blank")
        pytest.fail(f"Swagger UI did not render at /docs; requests refused off loopback: {tab.offsite}")


def _try_it_out(operation: Any) -> None:
    """Expand a Swagger operation and switch it to editing."""
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()


FHIR_OPERATION = "#operations-bluebutton-fetch_fhir_bluebutton_fhir_get"


def _authorize_swagger(tab: Tab, token: str) -> None:
    """Paste the token into Swagger UI's Authorize dialog."""
    page = tab.page
    page.locator(".auth-wrapper button.authorize").click()
    # the bearer scheme's block (the operator's X-API-Key scheme sits beside it)
    dialog = page.locator(".modal-ux .auth-container", has_text="BlueButtonToken")
    dialog.locator("input[type=text]").fill(token)
    tab.shoot("authorize-dialog")
    dialog.locator("button.authorize").click()
    dialog.locator("button", has_text="Logout").wait_for()  # Swagger accepted the token
    tab.shoot("authorized")
    dialog.locator("button.btn-done").click()
    assert dialog.count() == 0


def _fetch_in_swagger(fhir: Any, choices: dict[str, str], timeout_ms: int) -> tuple[Any, Any]:
    """Run `GET /bluebutton/fhir` with these select-box choices; its status cell and body once
    the body has rendered."""
    _try_it_out(fhir)
    for name, value in choices.items():
        fhir.locator(f'tr[data-param-name="{name}"] select').select_option(value)
    fhir.locator("button.execute").click()
    status = fhir.locator(".live-responses-table .response .response-col_status").first
    body = fhir.locator(".live-responses-table .response-col_description pre.microlight").first
    body.wait_for(timeout=timeout_ms)
    return status, body


def test_authorize_and_fetch_through_swagger_ui(tab: Tab, stack: Stack, e2e: Harness) -> None:
    page = tab.page
    page.goto(f"{stack.connector_url}/docs")
    _swagger_ready(tab)
    tab.shoot("docs")

    authorize = page.locator("#operations-oauth-authorize_bluebutton_authorize_get")
    _try_it_out(authorize)
    authorize.locator("button.execute").click()
    body = authorize.locator(".live-responses-table .response-col_description pre.microlight").first
    body.wait_for()
    tab.shoot("authorize-executed")
    authorize_url = json.loads(body.inner_text())["authorize_url"]
    assert authorize_url.startswith(f"{stack.cms_url}/v2/o/authorize/?")

    page.goto(authorize_url)
    token = log_in_and_approve(tab, SWAGGER_USER)

    page.goto(f"{stack.connector_url}/docs")
    _swagger_ready(tab)
    _authorize_swagger(tab, token)

    fhir = page.locator(FHIR_OPERATION)
    status, body = _fetch_in_swagger(fhir, {"resource_type": "ExplanationOfBenefit"}, TIMEOUT_MS)
    tab.shoot("fhir-executed")

    assert status.inner_text().strip() == "200"
    text = body.inner_text()
    assert '"data_record_location"' in text
    location = re.search(r'"data_record_location":\s*"([^"]+)"', text)
    assert location is not None
    record = e2e.read_back(location[1])  # what the panel shows is what connect holds
    assert record.bundle["total"] == e2e.cms_user(SWAGGER_USER)["claims"]
    answer = fhir.locator(".live-responses-table tr.response").first.inner_text()
    assert re.search(rf"x-lfh-data-record-locations: {re.escape(location[1])}\s", answer, re.IGNORECASE)
    assert tab.offsite == []


def test_docs_loads_nothing_from_other_hosts(stack: Stack, e2e: Harness) -> None:
    """Offline (the one-command demo, CI), `/docs` must not need another host: FastAPI's default
    page loads Swagger UI from cdn.jsdelivr.net and its favicon from fastapi.tiangolo.com."""
    html = e2e.client.get(f"{stack.connector_url}/docs").text
    urls = re.findall(r"""(?:src|href)\s*=\s*["'](https?://[^"']+)""", html)
    assert sorted({url for url in urls if urlsplit(url).hostname not in LOOPBACK}) == []


def test_swagger_ui_renders_a_200_claim_return_cms_answer(tab: Tab, stack: Stack, e2e: Harness) -> None:
    """The merged Bundle of 200 claims (`return_cms=true`) shows up in Swagger UI's response panel.

    Syntax-highlighting megabytes of JSON froze the tab for 16-93 s, so the body must be plain
    text; the wait for it is generous and the time it took is printed, never asserted.
    """
    token = e2e.tokens(BIG_USER)["access_token"]
    page = tab.page
    page.goto(f"{stack.connector_url}/docs")
    _swagger_ready(tab)
    _authorize_swagger(tab, token)
    fhir = page.locator(FHIR_OPERATION)
    started = time.perf_counter()
    query = {"resource_type": "ExplanationOfBenefit", "return_cms": "true"}
    status, body = _fetch_in_swagger(fhir, query, BIG_ANSWER_TIMEOUT_MS)
    rendered = time.perf_counter() - started
    # The viewport only: the whole page is tens of thousands of pixels tall and capturing it
    # outlasts any timeout on a loaded machine.
    tab.shoot("big-answer", full_page=False)

    assert status.inner_text(timeout=BIG_ANSWER_TIMEOUT_MS).strip() == "200"
    tokens_highlighted = body.locator("span").count()
    assert tokens_highlighted == 0, f"the body is syntax-highlighted ({tokens_highlighted} spans)"
    text = body.inner_text(timeout=BIG_ANSWER_TIMEOUT_MS)
    bundle = json.loads(text)
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 200
    assert len(bundle["entry"]) == 200 == e2e.cms_user(BIG_USER)["claims"]
    print(f"swagger ui: a {len(text) / 1e6:.1f} MB return_cms answer rendered {rendered:.1f} s after Execute")
    assert tab.offsite == []
