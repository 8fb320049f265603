"""Errors a person meets in a real browser on the authorization routes (issue 11): reloading the
token page, pressing Deny. Each is the connector's HTML error page whose Start again link leads
back to CMS's login, never raw JSON."""

from __future__ import annotations

import pytest

from bluebutton.sandbox.tools.stack import Stack
from tests.e2e import test_browser
from tests.e2e.test_browser import Tab, log_in_and_approve

# The browser module's fixtures (one Chromium per module, a fresh context per test).
browser = test_browser.browser
tab = test_browser.tab

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("healthy")]

# Users no other e2e test authorizes: a new grant ends the user's earlier tokens.
RELOAD_USER = 29
DENY_USER = 30


def assert_start_again_leads_to_cms(tab: Tab, stack: Stack, step: str) -> None:
    page = tab.page
    page.wait_for_selector("#start-again")
    tab.shoot(step)
    assert page.locator("#reasons li").count() >= 1
    page.click("#start-again")
    page.wait_for_selector("#username")  # CMS's login page again, for a new authorization
    assert page.url.startswith(f"{stack.cms_url}/")


def test_reloading_the_token_page_offers_to_start_again(tab: Tab, stack: Stack) -> None:
    page = tab.page
    page.goto(f"{stack.connector_url}/bluebutton/authorize")
    log_in_and_approve(tab, RELOAD_USER)
    answer = page.reload()
    assert answer is not None and answer.status == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert "already used state" in page.locator("#reasons").inner_text()
    assert_start_again_leads_to_cms(tab, stack, "reloaded")
    assert tab.offsite == []


def test_pressing_deny_offers_to_start_again(tab: Tab, stack: Stack) -> None:
    page = tab.page
    page.goto(f"{stack.connector_url}/bluebutton/authorize")
    page.wait_for_selector("#username")
    page.fill("#username", f"BBUser{DENY_USER:05d}")
    page.fill("#password", f"PW{DENY_USER:05d}!")
    page.click("#login")
    page.wait_for_selector("#deny")
    with page.expect_response("**/bluebutton/authorize_callback?**") as callback:
        page.click("#deny")
    assert callback.value.status == 403
    assert "declined" in page.locator("#reasons").inner_text()
    assert_start_again_leads_to_cms(tab, stack, "denied")
    assert tab.offsite == []
