"""Reading what went on the wire and what came back: query strings, forms, Basic credentials,
PKCE, OperationOutcome issues, and the ids and links of an HTML page."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx


def query_of(url: str) -> dict[str, str]:
    params = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in params.values()), params
    return {k: v[0] for k, v in params.items()}


def form_of(request: httpx.Request) -> dict[str, str]:
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    pairs = parse_qsl(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), names
    return dict(pairs)


def basic_credentials(request: httpx.Request) -> tuple[str, str]:
    scheme, _, value = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    return user, password


def s256(verifier: str) -> str:
    """RFC 7636 §4.2, computed independently of the product."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def outcome_issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    return list(body["issue"])


def diagnostics(response: httpx.Response) -> str:
    return "\n".join(issue.get("diagnostics", "") for issue in outcome_issues(response))


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    text: str = ""


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, Element] = {}
        self.links: list[str] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        if tag == "a" and element.attrs.get("href"):
            self.links.append(element.attrs["href"] or "")
        element_id = element.attrs.get("id")
        if element_id:
            assert element_id not in self.by_id, f"duplicate id {element_id}"
            self.by_id[element_id] = element
        if tag not in ("meta", "br", "input", "link", "img"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data


@dataclass
class HtmlPage:
    by_id: dict[str, Element]
    links: list[str]


def parse_html(html: str) -> HtmlPage:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return HtmlPage(parser.by_id, parser.links)
