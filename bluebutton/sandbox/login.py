"""Drive the whole authorization flow against a running stack with plain HTTP, as a browser would.

connector `/bluebutton/authorize` → emulated CMS login form → consent form → redirect to the
connector's callback → token set. Used by the end-to-end tests and the benchmark.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx

from bluebutton.sandbox.stack import ca_context

_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def _form_action(page: httpx.Response) -> str:
    match = _ACTION.search(page.text)
    if match is None:
        raise AssertionError(f"no form on {page.url} (HTTP {page.status_code})")
    return str(page.url.join(unescape(match[1])))


def authorize(
    connector_url: str,
    user_number: int,
    *,
    share_demographics: bool = True,
    allow: bool = True,
    accept: str = "application/json",
    sync: bool = False,
) -> httpx.Response:
    """Run the flow for `BBUser<user_number>`; the answer is the connector's callback response."""
    with httpx.Client(verify=ca_context(), timeout=30.0) as client:
        start = client.get(
            f"{connector_url}/bluebutton/authorize",
            params={"sync": "true"} if sync else None,
            headers={"Accept": "application/json"},
        )
        start.raise_for_status()
        login = client.get(start.json()["authorize_url"], follow_redirects=True)
        login.raise_for_status()
        username = f"BBUser{user_number:05d}"
        consent = client.post(
            _form_action(login),
            data={"username": username, "password": f"PW{user_number:05d}!", "login": "login"},
            follow_redirects=True,  # post/redirect/get to the consent page, still on CMS
        )
        consent.raise_for_status()
        redirect = client.post(
            _form_action(consent),
            data={
                "share_demographics": "yes" if share_demographics else "no",
                "allow": "true" if allow else "false",
            },
        )
        if redirect.status_code not in (302, 303):
            raise AssertionError(f"consent did not redirect: HTTP {redirect.status_code}")
        return client.get(redirect.headers["Location"], headers={"Accept": accept})


def token_set(connector_url: str, user_number: int, **choices: Any) -> dict[str, Any]:
    """The token set for a user who shares everything (or as `choices` say)."""
    response = authorize(connector_url, user_number, **choices)
    response.raise_for_status()
    tokens: dict[str, Any] = response.json()
    return tokens
