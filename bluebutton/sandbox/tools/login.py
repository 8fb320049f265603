"""Drive the whole authorization flow against a running stack with plain HTTP, as a browser would.

connector `/bluebutton/authorize` → emulated CMS login form → consent form → redirect to the
connector's callback → token set. Used by the end-to-end tests and the benchmark, and as the
non-browser login of the demo:

    python -m bluebutton.sandbox.tools.login BBUser00042 [--connector https://localhost:5200]

prints the connector's token JSON (`access_token`, `refresh_token`, `patient`, ...). It fills in
the emulated CMS's forms, so it only works against the emulator, never the real CMS.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from html import unescape
from typing import Any

import httpx

from bluebutton.sandbox.cms.data import USER_COUNT, parse_username
from bluebutton.sandbox.tools.stack import ca_context

DEFAULT_CONNECTOR = "https://localhost:5200"

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
    version: int | None = None,
    share_samhsa: bool = False,
) -> httpx.Response:
    """Run the flow for `BBUser<user_number>`; the answer is the connector's callback response.
    `version=3` authorizes on Blue Button v3, whose consent has the SAMHSA box (`share_samhsa`)."""
    params = {"sync": "true"} if sync else {}
    if version is not None:
        params["version"] = str(version)
    with httpx.Client(verify=ca_context(), timeout=30.0) as client:
        start = client.get(
            f"{connector_url}/bluebutton/authorize",
            params=params or None,
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
                # v3's page posts a hidden "False" and the ticked box's "True" (v2 ignores both)
                "share_samhsa_data": ["False", "True"] if share_samhsa else ["False"],
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bluebutton.sandbox.tools.login",
        description="Log a synthetic beneficiary in on the emulated Blue Button and consent, through "
        "the running connector, without a browser; prints the connector's token JSON.",
    )
    parser.add_argument("user", help="BBUser00000 .. BBUser29999 (the password is derived from it)")
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR, help=f"default {DEFAULT_CONNECTOR}")
    parser.add_argument(
        "--withhold-demographics", action="store_true", help="share claims but not the Patient resource"
    )
    parser.add_argument(
        "--sync", action="store_true", help="enrol for grant keeping (authorize?sync=true): prints the grant"
    )
    parser.add_argument(
        "--api-version",
        type=int,
        choices=(2, 3),
        default=None,
        help="the Blue Button API version (v3: BBUser09001-09005)",
    )
    parser.add_argument(
        "--share-samhsa", action="store_true", help="v3: tick the consent's substance-use (SAMHSA) box"
    )
    args = parser.parse_args(argv)
    user = parse_username(args.user)
    if user is None or user >= USER_COUNT:
        parser.error(f"{args.user!r} is not a sandbox user: BBUser00000 .. BBUser{USER_COUNT - 1:05d}")
    connector = args.connector.rstrip("/")
    try:
        response = authorize(
            connector,
            user,
            share_demographics=not args.withhold_demographics,
            sync=args.sync,
            version=args.api_version,
            share_samhsa=args.share_samhsa,
        )
    except httpx.TransportError as e:
        print(f"login: cannot reach {connector} ({e}); is the demo running (./scripts/run)?", file=sys.stderr)
        return 1
    except (httpx.HTTPStatusError, AssertionError) as e:
        print(f"login: the authorization did not complete: {e}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(
            f"login: the connector's callback answered HTTP {response.status_code}: {response.text}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
