"""Talking to a running stack from the outside: the connector, the emulators' data and admin APIs.

Everything goes over HTTPS to the stack's loopback URLs, verified against the project CA; a request
to any other host fails the test before it is sent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from bluebutton.sandbox.tools.login import authorize, token_set
from bluebutton.sandbox.tools.stack import Stack, StackConfig, ca_context, start_stack

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
CMS_PAGE_SIZE = 50  # what the connector asks for (CMS's maximum)


def _loopback_only(request: httpx.Request) -> None:
    if request.url.host not in LOOPBACK:
        raise AssertionError(f"refusing to send a request off loopback: {request.url}")


@dataclass(frozen=True)
class StoredRecord:
    """One record read back from connect's `/data`: its envelope and the decoded Bundle."""

    location: str
    envelope: dict[str, Any]
    bundle: dict[str, Any]


class _Forms(HTMLParser):
    """The first form's action and the ids of the page's elements (enough for the CMS pages)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "form" and self.action is None:
            self.action = values.get("action")


def parse_page(response: httpx.Response) -> _Forms:
    forms = _Forms()
    forms.feed(response.text)
    return forms


class Harness:
    """The stack's URLs plus one verified HTTP client, with the calls the tests need."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = httpx.Client(
            verify=ca_context(),
            timeout=httpx.Timeout(120.0, connect=10.0),
            # A new connection per request: a pooled one idle for the servers' 5 s keep-alive may
            # be closed by the server just as a request goes out on it (RemoteProtocolError), a
            # race that a loaded machine makes likely.
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,  # no proxy: everything stays on loopback
            event_hooks={"request": [_loopback_only]},
        )

    def close(self) -> None:
        self.client.close()

    # -- authorization ----------------------------------------------------------------------------

    def tokens(self, user: int, **choices: Any) -> dict[str, Any]:
        """A fresh token set for BBUser<user> (a new grant revokes the user's earlier tokens)."""
        return token_set(self.stack.connector_url, user, **choices)

    def authorize(self, user: int, **choices: Any) -> httpx.Response:
        """The connector's JSON callback answer after login and consent (any status)."""
        return authorize(self.stack.connector_url, user, **choices)

    def authorize_in_html(self, user: int, *, share_demographics: bool = True) -> httpx.Response:
        """The same flow as a browser sees it: redirects followed, the callback asked for as HTML."""
        html = {"Accept": "text/html"}
        with httpx.Client(
            verify=ca_context(), timeout=30.0, trust_env=False, event_hooks={"request": [_loopback_only]}
        ) as browser:
            login = browser.get(f"{self.stack.connector_url}/bluebutton/authorize", headers=html)
            assert login.status_code == 307, login.text
            login = browser.get(login.headers["Location"], headers=html, follow_redirects=True)
            page = parse_page(login)
            assert {"username", "password", "login"} <= page.ids, page.ids
            assert page.action is not None
            consent = browser.post(
                str(login.url.join(page.action)),
                data={"username": f"BBUser{user:05d}", "password": f"PW{user:05d}!", "login": "login"},
                headers=html,
                follow_redirects=True,
            )
            page = parse_page(consent)
            assert {"share-all", "allow"} <= page.ids, page.ids
            assert page.action is not None
            redirect = browser.post(
                str(consent.url.join(page.action)),
                data={"share_demographics": "yes" if share_demographics else "no", "allow": "true"},
                headers=html,
            )
            assert redirect.status_code in (302, 303), redirect.text
            callback = redirect.headers["Location"]
            assert urlsplit(callback).netloc == urlsplit(self.stack.connector_url).netloc
            return browser.get(callback, headers=html)

    # -- the connector ------------------------------------------------------------------------------

    def fhir(
        self, token: str, resource_type: str, *, idempotency_key: str | None = None, **params: Any
    ) -> httpx.Response:
        query = {"resource_type": resource_type}
        query |= {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        headers = {"Authorization": f"Bearer {token}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self.client.get(f"{self.stack.connector_url}/bluebutton/fhir", params=query, headers=headers)

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.client.post(
            f"{self.stack.connector_url}/bluebutton/refresh", json={"refresh_token": refresh_token}
        )

    # -- the emulated CMS ---------------------------------------------------------------------------

    def cms_entries(self, token: str, resource_type: str) -> list[dict[str, Any]]:
        """Every entry CMS serves for the search, fetched as the connector does: pages of 50,
        following `next`."""
        url: str | None = f"{self.stack.cms_url}/v2/fhir/{resource_type}?_count={CMS_PAGE_SIZE}"
        entries: list[dict[str, Any]] = []
        pages = 0
        while url is not None:
            pages += 1
            assert pages <= 20, "CMS paging does not end"
            response = self.client.get(
                url, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
            )
            assert response.status_code == 200, response.text
            page = orjson.loads(response.content)
            entries += page.get("entry", [])
            url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
        return entries

    def cms_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the CMS fault switchboard (`{}` heals it); the answer is the live state."""
        response = self.client.put(f"{self.stack.cms_url}/_sandbox/faults", json=faults)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def cms_faults_now(self) -> dict[str, Any]:
        return dict(self.client.get(f"{self.stack.cms_url}/_sandbox/faults").json())

    def cms_user(self, user: int) -> dict[str, Any]:
        return dict(self.client.get(f"{self.stack.cms_url}/_sandbox/users/BBUser{user:05d}").json())

    # -- the emulated connect: its controls on the control port, which stays open while it is down --

    def connect_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace connect's fault switches (`{}` restores the start-up values)."""
        response = self.client.put(f"{self.stack.connect_control_url}/_sandbox/faults", json=faults)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def connect_faults_now(self) -> dict[str, Any]:
        return dict(self.client.get(f"{self.stack.connect_control_url}/_sandbox/faults").json())

    def records(self) -> list[dict[str, Any]]:
        """Everything connect has stored: `{"offset", "uuid", "bytes"}` each, in offset order."""
        response = self.client.get(f"{self.stack.connect_control_url}/_sandbox/records")
        assert response.status_code == 200, response.text
        return list(response.json()["records"])

    def read_back(self, location: str) -> StoredRecord:
        """GET connect's `/data` for a `data_record_location` and decode the stored Bundle."""
        dataformat, partition, offset = location.split(":")
        params = {"dataformat": dataformat, "partition": partition, "offset": offset}
        response = self.client.get(f"{self.stack.connect_url}/data", params=params)
        assert response.status_code == 200, f"{location}: HTTP {response.status_code} {response.text}"
        envelope = orjson.loads(response.content)
        bundle = orjson.loads(base64.b64decode(envelope["data"]))
        return StoredRecord(location, envelope, bundle)


def header_list(response: httpx.Response, name: str) -> list[str]:
    value = response.headers.get(name, "")
    return [item for item in value.split(",") if item]


def outcome(response: httpx.Response) -> list[dict[str, Any]]:
    """The issues of an OperationOutcome answer."""
    assert response.headers["content-type"].startswith("application/fhir+json"), response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return list(body["issue"])


def diagnostics(response: httpx.Response) -> str:
    return "\n".join(issue.get("diagnostics", "") for issue in outcome(response))


@contextmanager
def running_stack(config: StackConfig, explain: Callable[[], str]) -> Iterator[Stack]:
    """The emulated stack for a test module or session; a start-up failure fails the tests with
    `explain()` (where the logs are) instead of an error in every test."""
    try:
        running = start_stack(config)
    except RuntimeError as e:
        pytest.fail(f"the stack did not start: {e} {explain()}", pytrace=False)
    try:
        yield running
    finally:
        running.stop()
