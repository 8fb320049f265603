"""`web/pages.py`: one render() for every page, a fresh nonce each time, and a policy that opens
only what a page uses (its script, its forms), sent with the security headers."""

from __future__ import annotations

import re

from bluebutton.web.pages import render


def policy(answer_headers: dict[str, str]) -> dict[str, str]:
    directives = (d.strip().split(" ", 1) for d in answer_headers["content-security-policy"].split(";"))
    return {name: value for name, value in directives}


def test_every_page_gets_a_fresh_nonce_on_its_one_stylesheet() -> None:
    first = render("error.html", 400, issues=[], http_status=400, start_again="/again")
    second = render("error.html", 400, issues=[], http_status=400, start_again="/again")
    nonces = []
    for page in (first, second):
        html = bytes(page.body).decode()
        nonce = re.fullmatch(r"'nonce-([\w-]+)'", policy(dict(page.headers))["style-src"])
        assert nonce is not None and html.count(f'<style nonce="{nonce[1]}">') == 1
        assert html.count("<style") == 1 and "<link" not in html  # the stylesheet is inlined
        nonces.append(nonce[1])
    assert nonces[0] != nonces[1] and first.status_code == 400


def test_a_page_opens_only_what_it_uses() -> None:
    error = render("error.html", 400, issues=[], http_status=400, start_again="/again")
    console = render(
        "console/not_configured.html",
        503,
        forms=True,
        referrer="same-origin",
        home="/c",
        refresh=False,
        signed_in=False,
        missing="X",
    )
    for page in (error, console):
        csp = policy(dict(page.headers))
        assert (csp["default-src"], csp["base-uri"], csp["frame-ancestors"]) == ("'none'", "'none'", "'none'")
        assert "script-src" not in csp and "img-src" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"
    assert policy(dict(error.headers))["form-action"] == "'none'"
    assert error.headers["referrer-policy"] == "no-referrer"
    assert policy(dict(console.headers))["form-action"] == "'self'"
    assert console.headers["referrer-policy"] == "same-origin" and console.status_code == 503


def test_extra_headers_are_kept_and_cannot_weaken_the_policy() -> None:
    page = render(
        "error.html",
        503,
        headers={"Retry-After": "30", "Cache-Control": "max-age=600"},
        issues=[],
        http_status=503,
        start_again="/again",
    )
    assert page.headers["retry-after"] == "30" and page.headers["cache-control"] == "no-store"
